"""The one training helper every model uses: devices, precision, seeds, curves, resume.

`strategy: auto` takes every local GPU through MirroredStrategy and falls back to the CPU;
`multi_worker` spans machines through MultiWorkerMirroredStrategy and TF_CONFIG.
"""

from __future__ import annotations

import csv
import io as stdio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import tensorflow as tf

from kexue import io, tracking
from kexue.errors import ParamsError


@dataclass(frozen=True)
class RuntimeConfig:
    seed: int
    strategy: Literal["auto", "cpu", "mirrored", "multi_worker"]
    mixed_precision: Literal["auto", "on", "off"]
    deterministic: bool
    backup_dir: str
    download_dir: str


def setup(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """Seed everything, pick the distribution strategy, set the precision policy."""
    keras.utils.set_random_seed(runtime.seed)
    if runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    mixed = runtime.mixed_precision == "on" or (runtime.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    return make_strategy(runtime.strategy, gpus)


def make_strategy(name: str, gpus: list) -> tf.distribute.Strategy:
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ParamsError("params.yaml: runtime.strategy: multi_worker needs TF_CONFIG set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "auto" and gpus:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()  # the default: the CPU here


def is_chief() -> bool:
    """True except on non-chief workers of a multi-worker job (they must not write outputs)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker"
        and task.get("index", 0) == 0
        and "chief" not in config.get("cluster", {})
    )


class EpochCurves(keras.callbacks.Callback):
    """After each epoch: append the logs to a CSV (a DVC plot) and log them to MLflow."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        buffer = stdio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(self.rows)
        io.write_text(self.path, buffer.getvalue())


def fit(
    model: keras.Model,
    train_data,
    validation_data,
    epochs: int,
    curves_path: Path,
    backup_dir: Path,
) -> keras.callbacks.History:
    """model.fit with curves, resume after an interruption, and quiet logs off a terminal."""
    callbacks = [
        # Restores the last finished epoch after a crash; removed when training completes.
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True),
        EpochCurves(curves_path),
    ]
    return model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=1 if sys.stderr.isatty() else 2,
    )
