"""`kexue repro --jobs N [TARGETS]`: `dvc repro` with the pipeline's independent branches side
by side, N at a time. Plain `dvc repro` stays the default; this is the same work, sooner on a
machine with cores to spare.

1. `dvc repro` of the stages two or more targets need (the fetches of sources two models
   read): once, first.
2. For each target, N at a time, the longest first (`parallel.order` in params.yaml), its
   branch: `dvc --wait-for-lock repro --single-item` of the stages it needs that no other
   target does, in order. A branch leaves the shared stages alone: DVC locks a stage's
   outputs even to find it unchanged, and that fails at once while another branch runs a
   stage reading them. DVC holds its repo lock only between stage commands and lets go
   while one runs, so the branches take turns at it, not at the stages. Each
   branch's TensorFlow gets cores // N intra- and inter-op threads (TensorFlow reads
   TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS; OMP_NUM_THREADS caps NumPy's BLAS).
   Its output goes to `.kexue/repro/<target>.log`, one line a branch to the terminal.
3. `dvc repro TARGETS`, which must find nothing left to run.

Targets default to every stage no other stage depends on (the eight `export_<model>` stages
and `augment`). Each run's times go to `.kexue/repro/times.json`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kexue import io, params, tracking
from kexue.errors import KexueError, ParamsError
from kexue.servers import tool_env

LOGS = Path(".kexue", "repro")
TIMES = "times.json"
RUNNING = re.compile(r"Running stage '([^']+)'")
# TensorFlow's own thread pools read these; OpenMP's (NumPy's BLAS, oneDNN) the last.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


class ReproError(KexueError):
    """A step of `kexue repro` failed or left work for `dvc repro`."""


@dataclass
class Outcome:
    """How one `dvc repro` went: its exit code, seconds, and the seconds of each stage it ran
    (from DVC's "Running stage" line to the next)."""

    target: str
    log: Path
    returncode: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def status(self) -> str:
        ran = f"{len(self.stages)} stage{'s' * (len(self.stages) != 1)} ran"
        if self.returncode == 0:
            return f"{self.target}: done in {_duration(self.seconds)}, {ran}; log {self.log}"
        return (
            f"{self.target}: FAILED (exit {self.returncode}) after {_duration(self.seconds)}, "
            f"{ran}; see {self.log}"
        )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def plan(targets: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the stages two or more targets need, {target: the other stages it needs}), stages as
    DVC names in the order they run; no targets: every pipeline stage no other stage depends
    on."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo() as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        try:
            if targets:
                chosen = [stage for target in targets for stage in repo.stage.collect(target)]
            else:
                chosen = [s for s in graph if graph.in_degree(s) == 0]
        except DvcException as err:
            raise ReproError(f"dvc.yaml: {tracking.one_line(str(err))}") from None
        # Once each, in the order given: a target named twice must not run twice at once.
        chosen = [stage for stage in dict.fromkeys(chosen) if isinstance(stage, PipelineStage)]
        needs = {stage: {stage, *nx.descendants(graph, stage)} for stage in chosen}
        shared = {
            stage
            for target, upstream in needs.items()
            for stage in upstream
            if any(stage in other for t, other in needs.items() if t is not target)
            and isinstance(stage, PipelineStage)
        }
        ordered = list(nx.topological_sort(graph.reverse()))
        branches = {
            target.addressing: [
                s.addressing
                for s in ordered
                if s in needs[target] - shared and isinstance(s, PipelineStage)
            ]
            for target in chosen
            if target not in shared
        }
    return [s.addressing for s in ordered if s in shared], branches


def longest_first(branches: list[str], order: list[str]) -> list[str]:
    """`branches` in the order of `order` (longest first); any it does not name last, as
    given."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(branches, key=lambda name: rank.get(name, len(rank)))


def branch_order(all_params: dict) -> list[str]:
    """`parallel.order` of params.yaml: the branches' targets, longest first."""
    order = params.block(all_params, "parallel").get("order")
    if not isinstance(order, list) or not all(isinstance(name, str) for name in order):
        raise ParamsError(
            f"params.yaml: parallel.order: expected a list of stage names, got {order!r}"
        )
    return order


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def thread_env(jobs: int) -> dict[str, str]:
    """Each of `jobs` branches' share of this machine's cores, at least one thread."""
    return dict.fromkeys(THREAD_VARIABLES, str(max(1, cores() // jobs)))


class Runner:
    """Runs `dvc` commands in the project, each in its own process group with its output in
    a log under `.kexue/repro/`; ends every group still running when told to stop."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = root
        self.env = tool_env(env)
        self.logs = root / LOGS
        self.logs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopping = False

    def dvc(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Outcome:
        """`dvc ARGS` (its log named after `name`), timed stage by stage."""
        log = self.logs / f"{re.sub(r'[^A-Za-z0-9_.@-]', '_', name)}.log"
        outcome = Outcome(name, log.relative_to(self.root))
        with log.open("w", encoding="utf-8") as log_file:
            process = subprocess.Popen(
                ["dvc", *args],
                cwd=self.root,
                env={**self.env, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,  # its own group: stopped with its stage processes
            )
            with self._lock:
                self._running.add(process)
                if self._stopping:
                    self._end(process)
            try:
                outcome.returncode, outcome.seconds, outcome.stages = timed(process, log_file)
            except BaseException:  # interrupted: end the command's group with us
                self._end(process)
                process.wait()
                raise
            finally:
                with self._lock:
                    self._running.discard(process)
        return outcome

    def stop(self) -> None:
        """End every command still running, and any started after."""
        with self._lock:
            self._stopping = True
            for process in self._running:
                self._end(process)

    @staticmethod
    def _end(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


def timed(process: subprocess.Popen, copy_to) -> tuple[int, float, dict[str, float]]:
    """(exit code, seconds, seconds of each stage it ran) of a running `dvc repro` whose
    output is piped, each line copied to `copy_to`; a stage runs from its "Running stage"
    line to the next (or to the end)."""
    started = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, started
    for line in process.stdout:
        copy_to.write(line)
        copy_to.flush()
        if match := RUNNING.match(line):
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = match.group(1), now
    returncode = process.wait()
    end = time.perf_counter()
    if current:
        stages[current] = end - since
    return returncode, end - started, stages


def repro(jobs: int, targets: list[str], out=sys.stdout) -> dict:
    """Run the pipeline (or `targets`) as the module docstring says; the times, as written
    to `.kexue/repro/times.json`. Raises ReproError naming what failed."""
    if jobs < 1:
        raise ParamsError(f"--jobs: expected a whole number of at least 1, got {jobs}")
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise ReproError(f"{root}: no dvc.yaml here; run kexue repro from the project root")
    shared, branch_stages = plan(targets)
    branches = longest_first(list(branch_stages), branch_order(params.load(root / "params.yaml")))
    runner = Runner(root)
    threads = thread_env(min(jobs, len(branches)) or 1)
    started = time.perf_counter()
    _prepare_store()
    times: dict = {"jobs": jobs, "threads": int(threads[THREAD_VARIABLES[0]]), "branches": {}}
    if shared:
        first = runner.dvc("shared", ["repro", *shared])
        print(first.status(), file=out, flush=True)
        times["shared"] = {"seconds": first.seconds, "stages": first.stages}
        if first.returncode != 0:
            raise ReproError(f"the shared stages failed; see {first.log}")
    print(
        f"{len(branches)} branches, {jobs} at a time, {threads[THREAD_VARIABLES[0]]} "
        f"TensorFlow thread(s) each; logs in {LOGS}/",
        file=out,
        flush=True,
    )
    failed = _run_branches(
        runner, {b: branch_stages[b] for b in branches}, jobs, threads, times, out
    )
    times["seconds"] = time.perf_counter() - started
    io.write_json(runner.logs / TIMES, times)
    if failed:
        raise ReproError(
            f"{len(failed)} of {len(branches)} branches failed: "
            + ", ".join(f"{o.target} (see {o.log})" for o in failed)
        )
    final = runner.dvc("final", ["repro", *targets])
    if final.returncode != 0 or final.stages:
        raise ReproError(
            f"the closing dvc repro {'failed' if final.returncode else 'ran '}"
            f"{', '.join(final.stages)}: the branches left work undone; see {final.log}"
        )
    print(f"dvc repro: nothing left to run; {_duration(times['seconds'])} in all", file=out)
    return times


def _run_branches(
    runner: Runner, branches: dict[str, list[str]], jobs: int, threads: dict, times: dict, out
) -> list[Outcome]:
    """Each branch's `dvc repro` of its own stages, `jobs` at a time, in the given order; the
    failed ones."""
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(
                runner.dvc, name, ["--wait-for-lock", "repro", "--single-item", *stages], threads
            )
            for name, stages in branches.items()
        ]
        try:
            for future in concurrent.futures.as_completed(futures):
                outcome = future.result()
                print(outcome.status(), file=out, flush=True)
                times["branches"][outcome.target] = {
                    "seconds": outcome.seconds,
                    "returncode": outcome.returncode,
                    "stages": outcome.stages,
                }
                if outcome.returncode != 0:
                    failed.append(outcome)
        except BaseException:
            for future in futures:
                future.cancel()
            runner.stop()
            raise
    return failed


def _prepare_store() -> None:
    """Create the tracking store (and run its migrations) before the branches start: two
    processes creating one SQLite store at once break its schema."""
    tracking.connect()
