"""Where each model's training time goes: the FLOP/s of its training step against the
machine's dense matmul rate (bench/flops.py), measured in the same run.

    python bench/training.py                          # after the data stages, see below
    python bench/training.py --models crf title --steps 100 --repeats 3

The model and data are the very ones the train stage fits: `<model>.train` runs as the stage
runs it (params.yaml, the data and vocabulary the stage reads, per dvc.yaml) until it calls
`training.fit`; that call is caught and its model and dataset are timed here. Step time: the
median of `--repeats` rounds, each a warm-up epoch of `--steps` steps (tracing, the shuffle
buffer filling) and a timed one; before each round, one round of bench/flops.py's matmul, so
that the peak and the steps see the same load on the machine.

FLOPs per step are counted by TensorFlow's graph profiler (tf.compat.v1.profiler,
float_operation) on the graph of the model's own `train_step` (forward, gradients, optimizer
update), traced for the shapes of each batch and averaged over the first `--steps` batches of
the dataset. The profiler counts the ops it knows a cost for (matmuls, convolutions,
elementwise arithmetic, reductions; here also einsum) in the graph it is given, not inside
loop bodies: the count is taken on a twin of the graph with the loops unrolled (RNN layers
`unroll`, keras.ops.scan a Python loop), the same arithmetic step by step. Ops it has no
cost for (exp, tanh, sigmoid, gathers, Adam's variable updates) count 0: the figure is a
lower bound of the work, dominated by the matmuls.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from flops import matmul_gflops  # noqa: E402  (bench/flops.py: the peak)
from tensorflow.python.framework import graph_util_impl  # noqa: E402
from tensorflow.python.framework import ops as tf_ops  # noqa: E402

from kexue import models, params, training  # noqa: E402

MODELS = ["crf", "attention", "similarity", "title", "capsule", "poet", "ode", "dogs"]
# dogs' second training.fit call is its first on images (the first fits the head alone on
# pooled features); every other model fits once.
FIT_CALL = {"dogs": 1}
DEFAULT_STEPS = {"dogs": 10, "capsule": 20, "title": 30}  # the slow ones on 2 CPU cores
# Ops that call a function (a loop body, a branch): the profiler does not count inside them.
LOOP_OPS = {
    "While",
    "StatelessWhile",
    "If",
    "StatelessIf",
    "PartitionedCall",
    "StatefulPartitionedCall",
}


@dataclasses.dataclass
class Fitted(Exception):
    """What the train stage was about to fit."""

    model: keras.Model
    dataset: tf.data.Dataset
    callbacks: list


@contextlib.contextmanager
def fit_caught(call: int) -> Iterator[None]:
    """training.fit runs for real `call` times, then raises Fitted instead of fitting."""
    real_fit, calls = training.fit, 0

    def catch(model, train_data, *args, extra_callbacks=(), **kwargs):
        nonlocal calls
        calls += 1
        if calls <= call:
            with contextlib.redirect_stdout(sys.stderr):  # its epoch logs are not our figures
                return real_fit(model, train_data, *args, extra_callbacks=extra_callbacks, **kwargs)
        raise Fitted(model, train_data, list(extra_callbacks))

    training.fit = catch
    try:
        yield
    finally:
        training.fit = real_fit


def stage_paths(name: str, dvc_file: Path = Path("dvc.yaml")) -> tuple[Path, Path | None]:
    """(--data, --vocab) of the stage train_<name> in dvc.yaml."""
    command = shlex.split(yaml.safe_load(dvc_file.read_text())["stages"][f"train_{name}"]["cmd"])
    options = dict(zip(command[3::2], command[4::2], strict=False))
    vocab = options.get("--vocab")
    return Path(options["--data"]), Path(vocab) if vocab else None


def stage_fit(name: str) -> Fitted:
    """What the train stage of `name` fits, with the params in params.yaml."""
    all_params = params.load()
    config = params.parse(models.load(name).Config, params.block(all_params, name), name)
    runtime = params.parse(training.RuntimeConfig, all_params.get("runtime"), "runtime")
    return fitted(name, config, runtime)


def fitted(name: str, config, runtime: training.RuntimeConfig) -> Fitted:
    """The model and dataset the train stage of `name` fits, outputs in a temp folder."""
    data_dir, vocab_file = stage_paths(name)
    with tempfile.TemporaryDirectory(prefix="kexue-bench-") as folder:
        runtime = dataclasses.replace(runtime, backup_dir=str(Path(folder) / "backup"))
        try:
            with fit_caught(FIT_CALL.get(name, 0)):
                models.load(name).train(
                    config, runtime, data_dir, vocab_file, Path(folder), Path(folder) / "c.csv"
                )
        except Fitted as caught:
            return caught
    raise RuntimeError(f"{name}.train finished without calling training.fit")


# -- FLOPs per step -------------------------------------------------------------------------------


def einsum_flops(graph, node) -> tf_ops.OpStats:
    """A multiply and an add at every point of the index space, what a contraction of two
    operands costs (the profiler has no count of its own for Einsum)."""
    operands = node.attr["equation"].s.decode().split("->")[0].split(",")
    sizes = {}
    for name, operand in zip(node.input, operands, strict=True):
        shape = graph_util_impl.tensor_shape_from_node_def_name(graph, name)
        shape.assert_is_fully_defined()
        letters = operand.replace("...", "")
        sizes.update(zip(letters, shape.as_list()[len(shape) - len(letters) :], strict=True))
    return tf_ops.OpStats("flops", 2 * math.prod(sizes.values()))


with contextlib.suppress(KeyError):  # KeyError: already registered (this file loaded twice)
    tf_ops.RegisterStatistics("Einsum", "flops")(einsum_flops)


def unrolled_scan(f, init, xs=None, length=None, reverse=False, unroll=1):
    """keras.ops.scan as a Python loop over a length known when tracing."""
    del unroll  # every step is unrolled
    steps = length if xs is None else keras.tree.flatten(xs)[0].shape[0]
    carry, ys = init, [None] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        x = None if xs is None else keras.tree.map_structure(lambda v, t=t: v[t], xs)
        carry, ys[t] = f(carry, x)
    if ys and ys[0] is None:
        return carry, None
    return carry, keras.tree.map_structure(lambda *y: keras.ops.stack(y), *ys)


@contextlib.contextmanager
def loops_unrolled(model: keras.Model) -> Iterator[None]:
    """While tracing: every RNN layer unrolled, keras.ops.scan a Python loop."""
    rnns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.RNN)]
    real_scan = keras.ops.scan
    keras.ops.scan = unrolled_scan
    for layer in rnns:
        layer.unroll = True
    try:
        yield
    finally:
        keras.ops.scan = real_scan
        for layer in rnns:
            layer.unroll = False


def batch_flops(model: keras.Model, batch) -> int:
    """Floating-point operations of one train_step on a batch of these shapes (profiler)."""
    specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
    with loops_unrolled(model):
        graph = tf.function(model.train_step).get_concrete_function(specs).graph
    loops = [op.type for op in graph.get_operations() if op.type in LOOP_OPS]
    if loops:
        raise RuntimeError(f"{model.name}: {loops} left in the graph: their bodies would count 0")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def mean_step_flops(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> float:
    """FLOPs of a step, averaged over the first `steps` batches (one count per shape)."""
    counts, per_shape = [], {}
    for batch in dataset.take(steps):
        shapes = tuple(tuple(t.shape) for t in tf.nest.flatten(batch))
        if shapes not in per_shape:
            per_shape[shapes] = batch_flops(model, batch)
        counts.append(per_shape[shapes])
    return statistics.mean(counts)


# -- timing ---------------------------------------------------------------------------------------


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def timed_epoch(caught: Fitted, dataset: tf.data.Dataset, steps: int) -> float:
    """Seconds of `steps` steps, after a warm-up epoch of as many (a new iterator: the
    shuffle buffer fills; the first call also traces)."""
    timer = EpochTimes()
    caught.model.fit(
        dataset,
        steps_per_epoch=steps,
        epochs=2,
        callbacks=[timer, *caught.callbacks],
        shuffle=False,  # the dataset shuffles, as the train stage's does
        verbose=0,
    )
    return timer.seconds[1]


def measure(name: str, steps: int, repeats: int) -> dict[str, float]:
    """Step seconds (median), GFLOP per step and the peak's GFLOP/s (median of the rounds
    before each timed round)."""
    caught = stage_fit(name)
    peak, seconds = [], []
    for _ in range(repeats):
        peak.append(matmul_gflops())
        seconds.append(timed_epoch(caught, caught.dataset.repeat(), steps) / steps)
    step_flops = mean_step_flops(caught.model, caught.dataset, steps)
    return {
        "step": statistics.median(seconds),
        "gflop": step_flops / 1e9,
        "peak": statistics.median(peak),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--steps", type=int, help="steps per timed epoch (default: per model)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median counts")
    args = parser.parse_args()
    rows, peaks = [], []
    for name in args.models:
        steps = args.steps or DEFAULT_STEPS.get(name, 100)
        figures = measure(name, steps, args.repeats)
        peaks.append(figures["peak"])
        rows.append((name, steps, figures))
        print(f"{name}: {figures}", file=sys.stderr, flush=True)
    peak = statistics.median(peaks)
    print(f"{os.cpu_count()} CPUs; float32 matmul peak (bench/flops.py, median of the rounds")
    print(f"between the models' rounds): {peak:.1f} GFLOP/s\n")
    print("| model | steps | step time | GFLOP/step | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|")
    for name, steps, figures in rows:
        rate = figures["gflop"] / figures["step"]
        print(
            f"| {name} | {steps} | {figures['step'] * 1e3:,.1f} ms | {figures['gflop']:.3f} "
            f"| {rate:.1f} | {100 * rate / peak:.1f}% |"
        )


if __name__ == "__main__":
    main()
