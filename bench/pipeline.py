"""Time `dvc repro`: with nothing changed (the no-op every rerun pays), and with
`--from-scratch` the whole default pipeline in a fresh clone (downloads included), stage by
stage; with `--jobs N` also `kexue repro --jobs N` from scratch in a clone of its own.

    python bench/pipeline.py                          # no-op; after a complete `dvc repro`
    python bench/pipeline.py --from-scratch           # the committed HEAD in a temp clone
    python bench/pipeline.py --from-scratch --jobs 2  # dvc repro, then kexue repro --jobs 2
    python bench/pipeline.py --from-scratch --jobs 2 --keep DIR   # the two builds kept in DIR
    python bench/pipeline.py --from-scratch --stages prepare_ode   # a part (and its inputs)

The no-op is timed in this checkout; it refuses to start when `dvc status` finds any stage
to run (it would then time real work). `--from-scratch` clones HEAD (uncommitted changes are
not in it) into a temp folder with no DVC cache, no data and no downloads, runs `dvc repro`
there with this interpreter's environment (the clone's own `src/`), and times each stage from
DVC's "Running stage" line to the next. `--jobs N` then does the same in a second fresh clone
with `kexue repro --jobs N` (docs/parallel.md) and prints both wall times and each branch's:
its stages' seconds in the serial run against its own `dvc repro`'s in the parallel one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kexue import parallel_repro
from kexue.servers import tool_env


def stages_to_run(stages: list[str], cwd: Path, env: dict) -> list[str]:
    """The stages `dvc status` finds changed (run by `dvc repro stages`)."""
    status = subprocess.run(
        ["dvc", "status", "--json", *stages], cwd=cwd, env=env, capture_output=True, text=True
    )
    if status.returncode != 0:
        raise SystemExit(f"dvc status in {cwd} failed:\n{status.stderr[-3000:]}")
    return sorted(json.loads(status.stdout))


def timed_repro(stages: list[str], cwd: Path, env: dict) -> parallel_repro.Outcome:
    """`dvc repro stages` in `cwd`, timed stage by stage (its log in .kexue/repro/)."""
    outcome = parallel_repro.Runner(cwd, env).dvc("bench", ["repro", *stages])
    if outcome.returncode != 0:
        log = (cwd / outcome.log).read_text(errors="replace")
        raise SystemExit(f"dvc repro {' '.join(stages)} in {cwd} failed:\n{log[-3000:]}")
    return outcome


def no_op(stages: list[str], repeats: int) -> None:
    env, cwd = tool_env(), Path.cwd()
    pending = stages_to_run(stages, cwd, env)
    if pending:
        raise SystemExit(f"dvc status: {', '.join(pending)} would run; dvc repro them first")
    seconds = [timed_repro(stages, cwd, env).seconds for _ in range(repeats)]
    print(f"dvc repro {' '.join(stages)} with nothing changed, {repeats} runs:")
    median, low, high = statistics.median(seconds), min(seconds), max(seconds)
    print(f"  median {median:.2f} s (min {low:.2f}, max {high:.2f})")


@contextmanager
def fresh_clone(keep: Path | None, name: str) -> Iterator[tuple[Path, dict]]:
    """(a clone of HEAD, an environment that runs the clone's own code): in a temp folder, or
    kept as keep/name (its build's dvc.lock and metrics can then be committed or compared)."""
    with tempfile.TemporaryDirectory(prefix="kexue-scratch-") as folder:
        clone = keep / name if keep else Path(folder) / "kexue-pipeline"
        subprocess.run(["git", "clone", "--quiet", str(Path.cwd()), str(clone)], check=True)
        yield clone, tool_env({"PYTHONPATH": str(clone / "src")})


def from_scratch(stages: list[str], jobs: int | None, keep: Path | None) -> None:
    with fresh_clone(keep, "serial") as (clone, env):
        serial = timed_repro(stages, clone, env)
    what = " ".join(stages) or "(all stages)"
    print(f"dvc repro {what} from scratch (fresh clone of HEAD, {os.cpu_count()} CPUs)")
    for stage, seconds in sorted(serial.stages.items(), key=lambda item: -item[1]):
        print(f"  {stage:32}{seconds / 60:8.2f} min")
    print(f"  {'total':32}{serial.seconds / 60:8.2f} min", flush=True)
    if jobs is not None:
        parallel = parallel_from_scratch(stages, jobs, keep)
        compare(serial, parallel, jobs)


def parallel_from_scratch(stages: list[str], jobs: int, keep: Path | None) -> dict:
    """`kexue repro --jobs N stages` in a fresh clone: its times.json, with the command's
    own wall time (the closing `dvc repro` included) as "seconds"."""
    with fresh_clone(keep, "parallel") as (clone, env):
        command = [sys.executable, "-m", "kexue.cli", "repro", "--jobs", str(jobs), *stages]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=clone, env=env, text=True, capture_output=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command[1:])} failed:\n{result.stdout}{result.stderr}")
        times = json.loads((clone / parallel_repro.LOGS / parallel_repro.TIMES).read_text())
    return {**times, "seconds": seconds}


def compare(serial: parallel_repro.Outcome, parallel: dict, jobs: int) -> None:
    """Both wall times, and each branch's minutes: the sum of its stages' in the serial run,
    and its own `dvc repro`'s in the parallel one (turns waited at DVC's lock included)."""
    print(f"kexue repro --jobs {jobs} from scratch ({parallel['threads']} TF threads a branch)")
    print(f"  {'branch':32}{'serial':>8}{'parallel':>10} min")
    rows = list(parallel["branches"].items())
    if "shared" in parallel:
        rows.insert(0, ("(shared stages)", parallel["shared"]))
    for name, branch in rows:
        alone = sum(serial.stages.get(stage, 0.0) for stage in branch["stages"])
        print(f"  {name:32}{alone / 60:8.2f}{branch['seconds'] / 60:10.2f}")
    print(f"  {'wall time':32}{serial.seconds / 60:8.2f}{parallel['seconds'] / 60:10.2f}")
    print(f"  speed-up {serial.seconds / parallel['seconds']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-scratch", action="store_true")
    parser.add_argument("--stages", nargs="*", default=[], help="targets (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="no-op runs; the median counts")
    parser.add_argument(
        "--jobs", type=int, help="from scratch: also kexue repro --jobs N, in its own clone"
    )
    parser.add_argument(
        "--keep", type=Path, help="from scratch: build in KEEP/serial (and KEEP/parallel), kept"
    )
    args = parser.parse_args()
    if (args.jobs is not None or args.keep) and not args.from_scratch:
        parser.error("--jobs and --keep go with --from-scratch")
    if args.from_scratch:
        from_scratch(args.stages, args.jobs, args.keep)
    else:
        no_op(args.stages, args.repeats)


if __name__ == "__main__":
    main()
