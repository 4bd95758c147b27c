"""What every stage script shares: params, the model's config, and one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from kexue import datasets, io, models, params
from kexue.errors import KexueError
from kexue.runtime import RuntimeConfig

PATH_OPTIONS = {
    "data": "the model's prepared data folder",
    "vocab": "the model's vocabulary (JSON); a model without one (ode, capsule) omits it",
    "model-dir": "folder of the trained model",
    "curves": "per-epoch CSV (a DVC plot)",
    "metrics": "JSON for `dvc metrics`",
    "plots": "folder for `dvc plots`",
    "out": "folder for the MLflow model",
    "validation": "JSON for `dvc metrics`: the validation figures that made the choices",
    "baselines": "folder of the model's trained baselines (the baseline stage's output)",
    "curves-dir": "folder of per-epoch CSVs, one a baseline (DVC plots)",
    "items": "CSV of per-item test scores, one column a system (and count)",
}
OPTIONAL = {"vocab", "baselines"}
TRAINING_SPLITS = ("train", "validation")
SPLITS = (*TRAINING_SPLITS, "test")


def stage_args(description: str, *path_options: str) -> argparse.Namespace:
    """Parse `MODEL --option PATH ...` for a stage that works on one model."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", choices=models.MODELS)
    for option in path_options:
        parser.add_argument(
            f"--{option}", type=Path, required=option not in OPTIONAL, help=PATH_OPTIONS[option]
        )
    return parser.parse_args()


def model_config(name: str) -> tuple[dict, ModuleType, object]:
    """(all params, the model's module, its checked config block)."""
    return _config(name, models.load(name))


def dataset_config(name: str) -> tuple[dict, ModuleType, object]:
    """(all params, the model's data module, its checked config block): for the stages that
    prepare data, without the model's module and TensorFlow."""
    return _config(name, datasets.load(name))


def _config(name: str, module: ModuleType) -> tuple[dict, ModuleType, object]:
    all_params = params.load()
    return all_params, module, params.parse(module.Config, params.block(all_params, name), name)


def evaluate_kwargs(module: ModuleType, baselines: Path | None) -> dict:
    """The optional arguments of `module.evaluate`: the baselines folder, for a model whose
    baselines are trained."""
    if "baselines_dir" in inspect.signature(module.evaluate).parameters:
        return {"baselines_dir": baselines}
    return {}


def runtime_config(all_params: dict) -> RuntimeConfig:
    return params.parse(RuntimeConfig, all_params.get("runtime"), "runtime")


def training_data_hash(data_dir: Path, vocab: Path | None) -> str:
    """The digest of what training may read: every prepared file but the test split's."""
    files = [f for f in sorted(data_dir.iterdir()) if f.stem != "test"] if data_dir.is_dir() else []
    return io.hash_paths([*files, vocab])


def data_inputs(data_dir: Path, vocab: Path | None, training: bool) -> list[tuple[str, Path]]:
    """(context, path) of the data a stage reads, for `tracking.log_inputs`: the files and
    folders of `data_dir` under the split their names begin with (train.txt,
    validation_pairs.npz, test/), any other (phrases.txt, truth.json, pairs.npz) under its own
    name; `training`: the train and validation splits only. Then the vocabulary."""
    inputs = []
    entries = sorted(data_dir.iterdir()) if data_dir.is_dir() else []  # missing: train says so
    for path in (p for p in entries if not p.name.startswith(".")):
        split = path.stem.split("_")[0]
        if not training or split in TRAINING_SPLITS:
            inputs.append((split if split in SPLITS else path.stem, path))
    return [*inputs, ("vocabulary", vocab)] if vocab is not None else inputs


def resumable(runtime: RuntimeConfig, name: str, data_hash: str, logged: dict) -> RuntimeConfig:
    """`runtime` with a backup folder of its own for this data and these params: an
    interrupted training resumes only the very same training; other data or params start
    afresh."""
    fingerprint = hashlib.sha256(f"{data_hash}{sorted(logged.items())}".encode()).hexdigest()
    backup_dir = Path(runtime.backup_dir) / f"{name}-{fingerprint[:16]}"
    return dataclasses.replace(runtime, backup_dir=str(backup_dir))


def run(main: Callable[[], None]) -> None:
    """Run a stage; bad input ends it with one line on stderr and exit code 1."""
    try:
        main()
    except KexueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
