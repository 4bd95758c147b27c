"""Wall time of each model's one-off `kexue` call, as a user runs it (a new Python process):
in process (`--no-daemon`), the first call (which starts the daemon, then loads the model)
and warm (the daemon up, the model loaded); median of --repeats. Checks that the three print
the same. Then what the daemon pays per call to find the champion's version: one SELECT on
the SQLite store vs MLflow's lookup (warm, in one process).

    python bench/cli.py                        # in the project, after `dvc repro`
    python bench/cli.py --project DIR          # its params.yaml, store, models/<model>/pyfunc

`tests/tiny_models.py DIR/models` (with MLFLOW_TRACKING_URI=sqlite:///DIR/mlruns.db and
params.yaml copied to DIR) makes such a DIR: the eight models at default sizes, seven minutes
on two loaded cores. Prints the machine's load average with the table: the calls share the
CPU with it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each model's call: the verb and its arguments ({image} is the model's example image).
CALLS = {
    "crf": ["segment", "今天天气不错"],
    "attention": ["sentiment", "质量很好，推荐"],
    "similarity": ["similar", "人类", "--top", "3"],
    "title": ["title", "床前明月光，疑是地上霜。"],
    "poet": ["poem", "-n", "2", "--seed", "7"],
    "ode": ["ode", "10", "20", "40"],
    "capsule": ["digits", "{image}"],
    "dogs": ["classify", "{image}", "--top", "3"],
}
LOOKUPS = 200  # champion-version reads timed per way


def run(argv: list[str], project: Path) -> tuple[float, str]:
    """(seconds, stdout) of `kexue *argv` in `project`; fails on a non-zero exit."""
    env = {**os.environ, "KEXUE_DAEMON": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "kexue.cli", *argv], cwd=project, env=env, capture_output=True
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"kexue {' '.join(argv)} failed:\n{done.stderr.decode()[-2000:]}")
    return seconds, done.stdout.decode()


def example_image(project: Path, model: str, folder: Path) -> str:
    """The model's serving example image, written to a file in `folder`."""
    example = project / "models" / model / "pyfunc" / "serving_input_example.json"
    data = json.loads(example.read_text())["dataframe_split"]["data"][0][0]
    path = folder / f"{model}.img"
    path.write_bytes(base64.b64decode(data))
    return str(path)


def time_model(project: Path, argv: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of each way of calling; every answer must be the in-process one."""
    times = {"cold": [], "first": [], "warm": []}
    expected = None
    for _ in range(repeats):
        seconds, out = run([*argv, "--no-daemon"], project)
        times["cold"].append(seconds)
        expected = expected or out
        run(["daemon", "stop"], project)
        for way in ("first", "warm"):
            seconds, out = run(argv, project)
            times[way].append(seconds)
            if out != expected:
                raise SystemExit(
                    f"kexue {' '.join(argv)}: {way} call printed\n{out}\nnot\n{expected}"
                )
    return {way: statistics.median(values) for way, values in times.items()}


def lookup_costs(project: Path, names: list[str]) -> dict[str, float]:
    """Median milliseconds per champion-version read, each way, warm."""
    os.chdir(project)
    import mlflow

    from kexue import registry, tracking
    from kexue.daemon.server import Champions

    champions = Champions(tracking.tracking_uri(), cache_seconds=0)
    tracking.connect()
    client = mlflow.MlflowClient()
    ways = {
        "SQLite SELECT": champions.read,
        "MLflow lookup": lambda name: registry._champion_version(client, name),
    }
    costs = {}
    for way, read in ways.items():
        read(names[0])  # warm: connections, caches
        times = []
        for i in range(LOOKUPS):
            start = time.perf_counter()
            read(names[i % len(names)])
            times.append(time.perf_counter() - start)
        costs[way] = 1000 * statistics.median(times)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(CALLS))
    args = parser.parse_args()
    project = args.project.resolve()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("| model | call | in process (s) | first call, starting the daemon (s) | warm (s) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as images:
        for model in args.models:
            argv = [
                example_image(project, model, Path(images)) if word == "{image}" else word
                for word in CALLS[model]
            ]
            median = time_model(project, argv, args.repeats)
            shown = " ".join(CALLS[model]).replace("{image}", "IMAGE")
            print(
                f"| {model} | `kexue {shown}` | {median['cold']:.2f} | {median['first']:.2f} "
                f"| {median['warm']:.2f} |",
                flush=True,
            )
    run(["daemon", "stop"], project)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    names = [f"kexue-{model}" for model in args.models]
    for way, milliseconds in lookup_costs(project, names).items():
        print(f"champion version, {way}: {milliseconds:.2f} ms (median of {LOOKUPS})")


if __name__ == "__main__":
    main()
