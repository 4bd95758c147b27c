"""Train each model and its baselines again with other seeds and print the spread of every
test figure and of every difference to a baseline, over the seeds.

    python bench/seeds.py --models crf attention similarity title dogs --seeds 1 2

Each other seed runs `dvc repro evaluate_<model> ...` in a fresh clone of HEAD (uncommitted
changes are not in it) that shares this checkout's DVC cache, so the fetch, prepare and vocab
stages are restored, not rerun, and only training, baselines and evaluation run again. A
seed's run is kept in `metrics/seeds_runs.json` with the fingerprint of the code and params
it ran (src/, stages/, params.yaml's values) and is reused while they are the same. The
workspace's own seed (`runtime.seed`) counts as one run once its metrics files are up to date
(`dvc status` clean for the models' evaluate stages); then `metrics/seeds.json` gets the mean,
standard deviation, min and max over the seeds (a DVC metric).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import yaml
from pipeline import stages_to_run, timed_repro

from kexue import io
from kexue.servers import tool_env

INTERVAL_ENDS = ("_low", "_high")


def figures(metrics: dict) -> dict[str, float]:
    """The figures a seed can move: every number but an interval's ends and item counts."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float)
        and not key.endswith(INTERVAL_ENDS)
        and not key.endswith("_items")
    }


def run_seed(seed: int, models: list[str], cache_dir: Path) -> dict[str, dict[str, float]]:
    """{model: figures} of a fresh clone of HEAD trained and evaluated with `seed`."""
    with tempfile.TemporaryDirectory(prefix=f"kexue-seed-{seed}-") as folder:
        clone = Path(folder) / "kexue-pipeline"
        subprocess.run(["git", "clone", "--quiet", str(Path.cwd()), str(clone)], check=True)
        env = tool_env(
            {
                "PYTHONPATH": str(clone / "src"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlruns.db'}",
            }
        )
        subprocess.run(["dvc", "cache", "dir", "--local", str(cache_dir)], cwd=clone, env=env)
        # `dvc add`-ed data (a user's corpus) comes from the shared cache, as a pull would.
        added = subprocess.run(
            ["git", "ls-files", "*.dvc"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.split()
        if added:
            subprocess.run(["dvc", "checkout", "--quiet", *added], cwd=clone, env=env, check=True)
        params_file = clone / "params.yaml"
        params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        params["runtime"]["seed"] = seed
        params_file.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
        total = timed_repro([f"evaluate_{m}" for m in models], clone, env).seconds
        print(f"seed {seed}: {total / 60:.1f} min", flush=True)
        return {m: figures(io.read_json(clone / "metrics" / f"{m}.json")) for m in models}


def spread(runs: dict[int, dict[str, dict[str, float]]], model: str) -> dict[str, dict]:
    """{figure: {mean, sd, min, max}} over the seeds' runs of `model`."""
    keys = set.intersection(*(set(run[model]) for run in runs.values()))
    summary = {}
    for key in sorted(keys):
        values = [run[model][key] for run in runs.values()]
        summary[key] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return summary


def code_fingerprint() -> str:
    """What a seed's figures depend on, besides the seed: HEAD's src/ and stages/ trees and
    the values (not the comments) of params.yaml, but for the seed itself."""
    trees = subprocess.run(
        ["git", "rev-parse", "HEAD:src", "HEAD:stages"], capture_output=True, text=True, check=True
    ).stdout
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    params["runtime"].pop("seed")
    return hashlib.sha256((trees + json.dumps(params, sort_keys=True)).encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True, help="besides runtime.seed")
    args = parser.parse_args()
    runs_file = Path("metrics/seeds_runs.json")
    stored = io.read_json(runs_file) if runs_file.is_file() else {"code": {}, "runs": {}}
    code, cache_dir = code_fingerprint(), Path(".dvc/cache").resolve()
    own_seed = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["runtime"]["seed"]
    for seed in (s for s in args.seeds if s != own_seed):
        todo = [m for m in args.models if stored["code"].get(m, {}).get(str(seed)) != code]
        if todo:
            for model, figs in run_seed(seed, todo, cache_dir).items():
                stored["runs"].setdefault(model, {})[str(seed)] = figs
                stored["code"].setdefault(model, {})[str(seed)] = code
            io.write_json(runs_file, stored)
    stale = stages_to_run([f"evaluate_{m}" for m in args.models], Path.cwd(), tool_env())
    if stale:
        raise SystemExit(f"dvc status: {', '.join(stale)} would run; dvc repro them, then rerun")
    for model in args.models:
        stored["runs"].setdefault(model, {})[str(own_seed)] = figures(
            io.read_json(f"metrics/{model}.json")
        )
        stored["code"].setdefault(model, {})[str(own_seed)] = code
    io.write_json(runs_file, stored)
    summary = {
        model: spread({int(s): {model: figs} for s, figs in seeds.items()}, model)
        for model, seeds in stored["runs"].items()
    }
    io.write_json("metrics/seeds.json", summary)
    for model in args.models:
        print(f"{model} over seeds {sorted(int(s) for s in stored['runs'][model])}:")
        for key, row in summary[model].items():
            low_high = f"[{row['min']:.4f}, {row['max']:.4f}]"
            print(f"  {key:40} {row['mean']:9.4f} ± {row['sd']:.4f}  {low_high}")


if __name__ == "__main__":
    main()
