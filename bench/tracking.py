"""Run-logging latency: MLflow's SQLite store (the project's default, no server) vs an
`mlflow server` on SQLite vs an `mlflow server` on PostgreSQL, all on this machine.

    python bench/tracking.py                  # 200 calls of each kind, 20 small runs
    python bench/tracking.py --calls 500 --runs 50

The servers are started here on 127.0.0.1, proxying an artifact folder, with the tests'
helpers (kexue/servers.py, kexue/postgres.py: Debian's PostgreSQL in a temp folder). Each
store gets a fresh experiment and run; after a few untimed calls, one log_param, one
log_metric, and one small run as a stage makes it (create, a batch of params, a batch of
metrics per epoch, end) are timed one by one, the stores taking turns. Prints the median
and 90th percentile per call.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from kexue import postgres
from kexue.servers import mlflow_server

WARM_UP = 5
# A small run, sized like a tiny training stage: its params, epochs and metrics per epoch.
RUN_PARAMS, RUN_EPOCHS, RUN_METRICS = 20, 5, 3


def timed(call: Callable[[int], object], n: int) -> list[float]:
    """Seconds per call of call(0..n-1), after untimed warm-up calls."""
    for i in range(WARM_UP):
        call(-1 - i)
    seconds = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - start)
    return seconds


def small_run(client: MlflowClient, experiment_id: str) -> None:
    run_id = client.create_run(experiment_id).info.run_id
    params = [Param(f"p{i}", str(i)) for i in range(RUN_PARAMS)]
    client.log_batch(run_id, params=params)
    for epoch in range(RUN_EPOCHS):
        now = int(time.time() * 1000)
        metrics = [Metric(f"m{i}", float(epoch), now, epoch) for i in range(RUN_METRICS)]
        client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id)


class Target:
    """One store's client, experiment and run, and its timings so far."""

    def __init__(self, uri: str):
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self.client.create_experiment(f"bench-{time.time_ns()}")
        self.run_id = self.client.create_run(self.experiment_id).info.run_id
        self.seconds: dict[str, list[float]] = {"log_param": [], "log_metric": [], "small run": []}

    def measure(self, calls: int, runs: int, offset: int) -> None:
        client, run_id = self.client, self.run_id
        kinds = {
            "log_param": (lambda i: client.log_param(run_id, f"p{offset + i}", "v"), calls),
            "log_metric": (lambda i: client.log_metric(run_id, "loss", 1.0, step=i), calls),
            "small run": (lambda i: small_run(client, self.experiment_id), runs),
        }
        # Ending a run on a server prints its URL (after one more request, which is timed).
        with contextlib.redirect_stdout(io.StringIO()):
            for kind, (call, n) in kinds.items():
                self.seconds[kind] += timed(call, n)


@contextlib.contextmanager
def stores(root: Path) -> Iterator[dict[str, str]]:
    """The three stores' tracking URIs, servers running until the block ends."""
    sqlite = f"sqlite:///{root / 'direct.db'}"
    with (
        postgres.cluster(root / "postgres.log") as database,
        mlflow_server(database.uri, root / "pg-server.log", root / "pg-artifacts") as on_pg,
        mlflow_server(
            f"sqlite:///{root / 'served.db'}", root / "sqlite-server.log", root / "artifacts"
        ) as on_sqlite,
    ):
        yield {"SQLite store": sqlite, "server on SQLite": on_sqlite, "server on PostgreSQL": on_pg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="timed log_param/log_metric calls")
    parser.add_argument("--runs", type=int, default=20, help="timed small runs")
    parser.add_argument("--rounds", type=int, default=5, help="the stores take turns this often")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kexue-bench-") as root, stores(Path(root)) as uris:
        targets = {name: Target(uri) for name, uri in uris.items()}
        # Turns, so that a busy spell of a shared machine hits every store alike.
        for turn in range(args.rounds):
            for target in targets.values():
                target.measure(
                    args.calls // args.rounds, args.runs // args.rounds, turn * args.calls
                )
    results = {name: target.seconds for name, target in targets.items()}
    kinds = list(next(iter(results.values())))
    print(f"{'store':<22}" + "".join(f"{kind + ' ms (p90)':>24}" for kind in kinds))
    for name, seconds in results.items():
        cells = [
            f"{statistics.median(s) * 1e3:.1f} ({statistics.quantiles(s, n=10)[-1] * 1e3:.1f})"
            for s in seconds.values()
        ]
        print(f"{name:<22}" + "".join(f"{cell:>24}" for cell in cells))
    print(
        f"({args.calls} log_param, {args.calls} log_metric, {args.runs} small runs of "
        f"{RUN_PARAMS} params + {RUN_EPOCHS} epochs x {RUN_METRICS} metrics per store)"
    )


if __name__ == "__main__":
    main()
