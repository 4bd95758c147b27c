"""Time `dvc repro`: with nothing changed (the no-op every rerun pays), and with
`--from-scratch` the whole default pipeline in a fresh clone (downloads included), stage by
stage, against the goal.

    python bench/pipeline.py                          # no-op; after a complete `dvc repro`
    python bench/pipeline.py --from-scratch           # the committed HEAD in a temp clone
    python bench/pipeline.py --from-scratch --stages prepare_ode   # a part (and its inputs)

The no-op is timed in this checkout; it refuses to start when `dvc status` finds any stage
to run (it would then time real work). `--from-scratch` clones HEAD (uncommitted changes are
not in it) into a temp folder with no DVC cache, no data and no downloads, runs `dvc repro`
there with this interpreter's environment (the clone's own `src/`), and times each stage from
DVC's "Running stage" line to the next.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kexue.servers import tool_env

RUNNING = "Running stage '"


@contextlib.contextmanager
def process_group(command: list[str], cwd: Path, env: dict) -> Iterator[subprocess.Popen]:
    """`command` in its own session, output piped; its whole group is ended if we stop early."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait()


def timed_repro(stages: list[str], cwd: Path, env: dict) -> tuple[float, dict[str, float]]:
    """(total seconds, seconds per stage that ran) of `dvc repro stages` in `cwd`."""
    command = ["dvc", "repro", *stages]
    per_stage, current, started = {}, None, time.perf_counter()
    output = []
    with process_group(command, cwd, env) as process:
        for line in process.stdout:
            output.append(line)
            now = time.perf_counter()
            if line.startswith(RUNNING):
                if current:
                    per_stage[current] = now - per_stage[current]
                current = line[len(RUNNING) :].split("'")[0]
                per_stage[current] = now
        process.wait()
    total = time.perf_counter() - started
    if current:
        per_stage[current] = started + total - per_stage[current]
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} in {cwd} failed:\n{''.join(output)[-3000:]}")
    return total, per_stage


def stages_to_run(stages: list[str], cwd: Path, env: dict) -> list[str]:
    """The stages `dvc status` finds changed (run by `dvc repro stages`)."""
    status = subprocess.run(
        ["dvc", "status", "--json", *stages], cwd=cwd, env=env, capture_output=True, text=True
    )
    if status.returncode != 0:
        raise SystemExit(f"dvc status in {cwd} failed:\n{status.stderr[-3000:]}")
    return sorted(json.loads(status.stdout))


def no_op(stages: list[str], repeats: int) -> None:
    env, cwd = tool_env(), Path.cwd()
    pending = stages_to_run(stages, cwd, env)
    if pending:
        raise SystemExit(f"dvc status: {', '.join(pending)} would run; dvc repro them first")
    seconds = [timed_repro(stages, cwd, env)[0] for _ in range(repeats)]
    print(f"dvc repro {' '.join(stages)} with nothing changed, {repeats} runs:")
    median, low, high = statistics.median(seconds), min(seconds), max(seconds)
    print(f"  median {median:.2f} s (min {low:.2f}, max {high:.2f})")


def from_scratch(stages: list[str], goal_minutes: float) -> None:
    with tempfile.TemporaryDirectory(prefix="kexue-scratch-") as folder:
        clone = Path(folder) / "kexue-pipeline"
        subprocess.run(["git", "clone", "--quiet", str(Path.cwd()), str(clone)], check=True)
        env = tool_env({"PYTHONPATH": str(clone / "src")})
        total, per_stage = timed_repro(stages, clone, env)
    what = " ".join(stages) or "(all stages)"
    print(f"dvc repro {what} from scratch (fresh clone of HEAD, {os.cpu_count()} CPUs)")
    for stage, seconds in sorted(per_stage.items(), key=lambda item: -item[1]):
        print(f"  {stage:32}{seconds / 60:8.2f} min")
    verdict = "meets" if total <= goal_minutes * 60 else "misses"
    print(f"  {'total':32}{total / 60:8.2f} min ({verdict} the {goal_minutes:g}-minute goal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-scratch", action="store_true")
    parser.add_argument("--stages", nargs="*", default=[], help="targets (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="no-op runs; the median counts")
    parser.add_argument("--goal-minutes", type=float, default=25.0, help="from scratch, 2 CPUs")
    args = parser.parse_args()
    if args.from_scratch:
        from_scratch(args.stages, args.goal_minutes)
    else:
        no_op(args.stages, args.repeats)


if __name__ == "__main__":
    main()
