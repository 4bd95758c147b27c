"""The one training helper every model uses: devices, precision, seeds, curves, resume.

`strategy: auto` takes every local GPU through MirroredStrategy and falls back to the CPU;
`multi_worker` spans machines through MultiWorkerMirroredStrategy and TF_CONFIG.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import dataclasses
import io as stdio
import json
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kexue import io, tracking
from kexue.errors import ParamsError
from kexue.runtime import RuntimeConfig


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
        _fix_keras_for_workers()
        # NCCL all-reduces between GPUs; between CPU-only machines, the ring over gRPC.
        implementation = tf.distribute.experimental.CommunicationImplementation
        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=implementation.NCCL if gpus else implementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "auto" and gpus:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()  # the default: the CPU here


def _fix_keras_for_workers() -> None:
    """Two fixes Keras 3 (3.15) needs to fit a model under MultiWorkerMirroredStrategy
    (keras-team/keras#20585); nothing changes under any other strategy.

    - Before fitting it builds the model from a first batch averaged over the workers, which
      fails on an (inputs, targets) pair, and could not work for batches of other lengths
      on each worker: shapes and dtypes, all the build needs, come from the dataset instead.
    - It averages each step's logs with `strategy.reduce("MEAN", value, axis=0)`, which
      fails on the scalar loss and metrics: they are averaged as scalars instead.
    """
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "kexue_fixed", False):
        return
    on_workers = trainer._collective_all_reduce_multi_worker
    keras_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    keras_reduce = trainer.reduce_per_replica

    def build(model, iterator=None, data_batch=None):
        strategy = model.distribute_strategy
        if iterator is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            iterator, data_batch = None, iterator.data_adapter.get_tf_dataset().element_spec
        return keras_build(model, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and on_workers(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, None), values)
        return keras_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = build
    trainer.reduce_per_replica = reduce_per_replica
    trainer.kexue_fixed = True


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as err:
        raise ParamsError(f"TF_CONFIG: expected a JSON object ({err})") from None


def worker_count(runtime: RuntimeConfig) -> int:
    """Machines in the job: the chief and workers TF_CONFIG lists under `multi_worker`, else 1."""
    if runtime.strategy != "multi_worker":
        return 1
    cluster = _tf_config().get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def _task() -> tuple[str, int]:
    """This machine's (type, index) in TF_CONFIG."""
    task = _tf_config().get("task")
    if not isinstance(task, dict) or not {"type", "index"} <= set(task):
        raise ParamsError('TF_CONFIG: expected "task": {"type": "worker", "index": <this machine>}')
    return task["type"], task["index"]


def is_chief(runtime: RuntimeConfig) -> bool:
    """True except on the non-chief workers of a multi-worker job (worker 0 is the chief of
    a cluster without a `chief` task)."""
    if runtime.strategy != "multi_worker":
        return True
    task_type, index = _task()
    has_chief = "chief" in _tf_config().get("cluster", {})
    return task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief)


@contextlib.contextmanager
def worker_outputs(
    runtime: RuntimeConfig, model_dir: Path, curves: Path
) -> Iterator[tuple[RuntimeConfig, Path, Path]]:
    """(runtime, model folder, curves file) for this worker of the job; the chief's are as given.

    Any other worker runs the very same training and saving (their collective ops need every
    worker) but writes the model and curves to a scratch folder, deleted after, and backs up
    to a folder of its own beside the chief's: Keras 3's BackupAndRestore knows nothing of
    workers, and each deletes its folder when training ends.
    """
    if is_chief(runtime):
        yield runtime, model_dir, curves
        return
    backup_dir = "{}-{}{}".format(runtime.backup_dir, *_task())
    with tempfile.TemporaryDirectory(prefix="kexue-worker-") as scratch:
        yield (
            dataclasses.replace(runtime, backup_dir=backup_dir),
            Path(scratch) / model_dir.name,
            Path(scratch) / curves.name,
        )


def on_one_machine(runtime: RuntimeConfig) -> RuntimeConfig:
    """`runtime` for a stage other than train: a multi-worker job trains the model, then the
    chief alone evaluates it, training any baseline on its own devices."""
    if runtime.strategy != "multi_worker":
        return runtime
    return dataclasses.replace(runtime, strategy="auto")


class EpochCurves(keras.callbacks.Callback):
    """After each epoch: write the logs so far to a CSV (a DVC plot) and log them to MLflow.

    A copy in the backup folder outlives an interrupted run (DVC deletes a stage's outputs
    before rerunning it), so a resumed training still writes the curve from epoch 1.
    MLflow steps start after `epochs_before`: the later phases of one run continue its curve.
    """

    def __init__(self, path: str | Path, backup_dir: str | Path, epochs_before: int = 0):
        super().__init__()
        self.path = Path(path)
        self.backup = Path(backup_dir) / "curves.csv"
        self.epochs_before = epochs_before
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        # Runs after BackupAndRestore's: a restored training starts past epoch 0.
        resumed_at = getattr(self.model, "_initial_epoch", None) or 0
        if resumed_at and self.backup.is_file():
            with self.backup.open(encoding="utf-8", newline="") as file:
                rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
            self.rows = [{**row, "epoch": int(row["epoch"])} for row in rows[:resumed_at]]
            for row in self.rows:  # this run is a new MLflow run: it gets the whole curve
                tracking.log_metrics(_without_epoch(row), step=self.epochs_before + row["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
        tracking.log_metrics(_without_epoch(row), step=self.epochs_before + epoch + 1)
        buffer = stdio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(self.rows)
        io.write_text(self.path, buffer.getvalue())
        io.write_text(self.backup, buffer.getvalue())


def _without_epoch(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "epoch"}


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
    """Save atomically (a non-chief worker's `path` is in its scratch folder: worker_outputs)."""
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


def sharded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` split between the workers of a multi-worker job by its elements (DATA).

    Every pipeline here starts from tensors in memory (from_tensor_slices), which FILE
    sharding cannot split (AUTO would warn, then fall back to DATA): each worker builds the
    same seeded pipeline and keeps its own slice of every global batch, so the job takes the
    very steps a single process would with that global batch.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fit(
    model: keras.Model,
    train_data,
    validation_data,
    epochs: int,
    curves_path: Path,
    backup_dir: Path,
    extra_callbacks: list[keras.callbacks.Callback] = (),
    epochs_before: int = 0,
    patience: int | None = None,
    monitor: str = "val_loss",
) -> keras.callbacks.History:
    """model.fit with curves, resume after an interruption, and quiet logs off a terminal;
    `extra_callbacks` are a model's own (a schedule of a loss weight); `epochs_before`, the
    epochs of the run's earlier phases.

    With `patience`, `epochs` is the most it trains: it stops once `monitor` (a validation
    figure, lower is better) has not improved for `patience` epochs, and keeps the weights
    of the best epoch (`best_epoch` reads which). A resumed run knows the best epoch only
    among those it trained itself: Keras' backup does not keep the early stopper's state.
    """
    callbacks = [
        # Restores the last finished epoch after a crash; removed when training completes.
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True),
        EpochCurves(curves_path, backup_dir, epochs_before),
        *extra_callbacks,
    ]
    if patience is not None:
        if validation_data is None:
            raise ParamsError("early stopping (patience) needs a validation split")
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor, patience=patience, mode="min", restore_best_weights=True
            )
        )
    return model.fit(
        sharded(train_data),
        validation_data=None if validation_data is None else sharded(validation_data),
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=1 if sys.stderr.isatty() else 2,
    )


def best_epoch(history: keras.callbacks.History, monitor: str = "val_loss") -> dict[str, float]:
    """The epoch (from 1) with the lowest `monitor` and every logged figure at that epoch,
    as `best_epoch` and `best_<figure>`: the validation figures that made the choice."""
    values = history.history[monitor]
    best = min(range(len(values)), key=values.__getitem__)
    # history.epoch numbers the epochs this run trained: a resumed run starts past 0.
    return {
        "best_epoch": history.epoch[best] + 1,
        **{f"best_{name}": float(series[best]) for name, series in history.history.items()},
    }
