"""The one training helper every model uses: devices, precision, seeds, curves, resume.

`strategy: auto` takes every local GPU through MirroredStrategy and falls back to the CPU;
`multi_worker` spans machines through MultiWorkerMirroredStrategy and TF_CONFIG.
"""

from __future__ import annotations

import bisect
import csv
import io as stdio
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    """After each epoch: write the logs so far to a CSV (a DVC plot) and log them to MLflow.

    A copy in the backup folder outlives an interrupted run (DVC deletes a stage's outputs
    before rerunning it), so a resumed training still writes the curve from epoch 1.
    """

    def __init__(self, path: str | Path, backup_dir: str | Path):
        super().__init__()
        self.path = Path(path)
        self.backup = Path(backup_dir) / "curves.csv"
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        # Runs after BackupAndRestore's: a restored training starts past epoch 0.
        resumed_at = getattr(self.model, "_initial_epoch", None) or 0
        if resumed_at and self.backup.is_file():
            with self.backup.open(encoding="utf-8", newline="") as file:
                rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
            self.rows = [{**row, "epoch": int(row["epoch"])} for row in rows[:resumed_at]]
            for row in self.rows:  # this run is a new MLflow run: it gets the whole curve
                tracking.log_metrics(_without_epoch(row), step=row["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
        tracking.log_metrics(_without_epoch(row), step=epoch + 1)
        buffer = stdio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(self.rows)
        io.write_text(self.path, buffer.getvalue())
        io.write_text(self.backup, buffer.getvalue())


def _without_epoch(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "epoch"}


def hold_out(items: list, fraction: float) -> tuple[list, list]:
    """(validation, training): the first `fraction` of the (shuffled) items, at least one."""
    n_held = max(1, round(len(items) * fraction))
    return items[:n_held], items[n_held:]


def global_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch size (params.yaml) times the replicas in sync."""
    return batch_size * strategy.num_replicas_in_sync


def cosine_adam(learning_rate: float, total_steps: int) -> keras.optimizers.Optimizer:
    """Adam whose rate decays to zero over the run (cosine): the last steps settle the
    weights instead of bouncing around a minimum at the full rate."""
    return keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    )


def save_model(model: keras.Model, path: Path) -> None:
    """Save atomically, from the chief only (other workers of a multi-worker job must not)."""
    if is_chief():
        with io.atomic_path(path) as tmp:
            model.save(tmp)


def bucket_batches(
    dataset: tf.data.Dataset,
    lengths: list[int],
    boundaries: list[int],
    batch_size: int,
    element_length: Callable,
    padding_values: Any,
) -> tf.data.Dataset:
    """Padded batches of elements of similar length (less padding to compute over).

    `lengths` are the elements' lengths as `element_length` measures them. Each bucket emits
    a batch when full and its remainder at the end, so the count of batches is known; telling
    tf.data gives Keras an epoch length.
    """
    dataset = dataset.bucket_by_sequence_length(
        element_length,
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=padding_values,
    )
    per_bucket = Counter(bisect.bisect_right(boundaries, length) for length in lengths)
    n_batches = sum(math.ceil(n / batch_size) for n in per_bucket.values())
    return dataset.apply(tf.data.experimental.assert_cardinality(n_batches))


def fit(
    model: keras.Model,
    train_data,
    validation_data,
    epochs: int,
    curves_path: Path,
    backup_dir: Path,
    extra_callbacks: list[keras.callbacks.Callback] = (),
) -> keras.callbacks.History:
    """model.fit with curves, resume after an interruption, and quiet logs off a terminal;
    `extra_callbacks` are a model's own (a schedule of a loss weight)."""
    callbacks = [
        # Restores the last finished epoch after a crash; removed when training completes.
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True),
        EpochCurves(curves_path, backup_dir),
        *extra_callbacks,
    ]
    return model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=1 if sys.stderr.isatty() else 2,
    )
