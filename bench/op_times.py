"""Where a training step's time goes, op by op: TensorFlow's profiler over the steps of the
model and dataset the train stage fits (caught as bench/training.py catches them).

    python bench/op_times.py --models title poet     # after the data stages
    python bench/op_times.py --models crf --steps 50 --top 12

After a warm-up epoch of `--steps` steps (tracing, the shuffle buffer filling), one epoch of
as many runs under tf.profiler; its framework-op statistics are summed by op type: the share
of the busy time (the profiler's self time; idle and tf.data's own ops left out),
milliseconds and ops run per step. Many ops a step at a few microseconds each is a step
bound by dispatching ops, not by arithmetic.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402
from training import DEFAULT_STEPS, MODELS, Fitted, stage_fit, timed_epoch  # noqa: E402

OP_STATS_TOOL = "framework_op_stats"  # the profiler's "TF stats" table
# Left out of the step's busy time: idle, and tf.data's ops, which run on their own threads
# beside the step (a new iterator's shuffle buffer fills during the profiled epoch).
NOT_THE_STEP = {"IDLE", "Dataset"}


def profiled_steps(caught: Fitted, steps: int, folder: Path) -> list[dict]:
    """The framework-op rows of one epoch of `steps` steps, after a warm-up."""
    timed_epoch(caught, caught.dataset.repeat(), steps)  # warm-up: the same shapes traced
    tf.profiler.experimental.start(str(folder))
    caught.model.fit(
        caught.dataset.repeat(), steps_per_epoch=steps, callbacks=caught.callbacks, verbose=0
    )
    tf.profiler.experimental.stop()
    traces = sorted(str(path) for path in folder.rglob("*.xplane.pb"))
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(traces, OP_STATS_TOOL, {})
    if not ok:
        raise RuntimeError(f"the profiler's {OP_STATS_TOOL}: {data.decode()}")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    rows = ([cell["v"] for cell in row["c"]] for row in table["rows"])
    return [dict(zip(columns, row, strict=True)) for row in rows]


def by_type(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """{op type: (self time in µs, ops run)}, idle and input pipeline left out."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for row in rows:
        if row["type"] not in NOT_THE_STEP:
            totals[row["type"]][0] += row["total_self_time"]
            totals[row["type"]][1] += int(row["occurrences"])
    return {op: (time, count) for op, (time, count) in totals.items()}


def report(name: str, steps: int, types: dict[str, tuple[float, int]], top: int) -> None:
    busy = sum(time for time, _ in types.values())
    ops = sum(count for _, count in types.values())
    print(f"\n{name}: {busy / steps / 1e3:.1f} ms busy a step, {ops / steps:,.0f} ops a step,")
    print(f"{busy / ops:.1f} µs an op on average\n")
    print("| op type | share | ms/step | ops/step |")
    print("|---|---|---|---|")
    ranked = sorted(types.items(), key=lambda item: -item[1][0])
    for op, (time, count) in ranked[:top]:
        share, per_step = 100 * time / busy, time / steps / 1e3
        print(f"| {op} | {share:.1f}% | {per_step:.2f} | {count / steps:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--steps", type=int, help="steps profiled (default: per model)")
    parser.add_argument("--top", type=int, default=8, help="op types listed")
    args = parser.parse_args()
    for name in args.models:
        steps = args.steps or DEFAULT_STEPS.get(name, 100)
        with tempfile.TemporaryDirectory(prefix="kexue-profile-") as folder:
            rows = profiled_steps(stage_fit(name), steps, Path(folder))
        report(name, steps, by_type(rows), args.top)


if __name__ == "__main__":
    main()
