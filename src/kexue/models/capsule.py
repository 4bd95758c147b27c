"""Capsule network on MNIST with the two-digit test, after "揭开迷雾，来一顿美味的Capsule盛宴".

MNIST by default; or one's own class-per-folder images (`data.source: folder`), read the way
dogs reads them (data/images.py), grey and scaled to 28 x 28, one class capsule a class.

The post's model: a small CNN front end -> its feature map read as a set of capsules ->
`Capsule` (one capsule a class, dynamic routing) -> each class capsule's length, trained with
the margin loss. Its baseline (the `baseline_capsule` stage): the same front end -> global
average pooling -> dense -> a sigmoid a class, trained with the same loss, rate, schedule and
most epochs, stopped early on the same validation digits.

The post's test: train on single digits, then show two different digits in one image (the
post stacks them, 56 x 28; side by side, 28 x 56, is reported too) and ask for the two
highest-scoring classes. Both models accept any image width
(shared capsule weights; global pooling), so the test needs no retraining; the capsule model
should find both digits far more often than the CNN, whose pooled features blur the two.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, splits, stats, training
from kexue.data.images import COUNTS_FILE
from kexue.data.mnist import SIDE
from kexue.datasets.capsule import (
    CLASSES_FILE,
    LAYOUT_AXES,
    Config,
    LossConfig,
    ModelConfig,
    as_input,
    class_names,
    load_npz,
    model_labels,
    two_digit_images,
)
from kexue.layers.capsule import Capsule, CapsuleLength, MarginLoss

MODEL_FILE = "model.keras"
BASELINE_FILE = "cnn.keras"  # in the baselines folder
SCORE = "acc"
DESCRIPTION = (
    "Capsule network (kexue.fm, Capsule盛宴) on MNIST or one's own class folders. Input: a "
    "column `image` of PNG/JPEG bytes or base64 text, or 2-D arrays (grey, 0..1; white digit "
    "on black for MNIST); the shorter side is scaled to 28 pixels, the longer may hold several "
    "objects. Output: `digit` (the best class's number), `top2` (two best, for two objects in "
    "one image), `scores` (each class capsule's length), `label` and `top2_labels` (their "
    "class names: the digits, or the folder names)."
)
SURE = 0.5  # a length above this says "present"; the post's second two-digit accuracy


# -- models -------------------------------------------------------------------------------


def front_end(config: ModelConfig, inputs):
    """The post's CNN: 3x3 ReLU convs, average pooling halfway; any image size."""
    half = len(config.conv_filters) // 2
    features = inputs
    for i, filters in enumerate(config.conv_filters):
        if i == half:
            features = keras.layers.AveragePooling2D(2)(features)
        features = keras.layers.Conv2D(filters, 3, activation="relu")(features)
    return features


def build_capsule_model(
    config: Config, optimizer: keras.optimizers.Optimizer, classes: int
) -> keras.Model:
    inputs = keras.Input(shape=(None, None, 1), name="image")
    features = front_end(config.model, inputs)
    capsules = keras.layers.Reshape((-1, config.model.conv_filters[-1]))(features)
    digits = Capsule(classes, config.model.capsule_dim, config.model.routings, name="digits")(
        capsules
    )
    model = keras.Model(inputs, CapsuleLength(name="lengths")(digits), name="capsule")
    return compiled(model, config.loss, optimizer)


def build_cnn_model(
    config: Config, optimizer: keras.optimizers.Optimizer, classes: int
) -> keras.Model:
    inputs = keras.Input(shape=(None, None, 1), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(front_end(config.model, inputs))
    hidden = keras.layers.Dense(config.model.cnn_dense, activation="relu")(pooled)
    scores = keras.layers.Dense(classes, activation="sigmoid")(hidden)
    return compiled(keras.Model(inputs, scores, name="cnn"), config.loss, optimizer)


def compiled(model: keras.Model, loss: LossConfig, optimizer) -> keras.Model:
    """Both models learn with the post's margin loss (the CNN's sigmoids are its lengths)."""
    model.compile(
        optimizer=optimizer,
        loss=MarginLoss(loss.upper, loss.lower, loss.down_weight),
        metrics=["categorical_accuracy"],
    )
    return model


def shifted(image: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """The (h, w, 1) image moved by up to `max_shift` pixels each way (a seeded crop of the
    zero-padded image). Still one digit; but a digit seen off-centre in training is read
    where it sits in a wider image, which is what the two-digit test asks."""
    padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


def batches(x: np.ndarray, y: np.ndarray, batch: int, classes: int) -> tf.data.Dataset:
    targets = np.eye(classes, dtype=np.float32)[y]
    return tf.data.Dataset.from_tensor_slices((as_input(x), targets)).batch(batch)


def fit(build, config: Config, runtime, data_dir: Path, curves: Path, backup: Path):
    """Train the model `build` makes on the training digits (shifted), stopping early on the
    validation digits' loss; returns (model, its validation figures)."""
    strategy = training.setup(runtime)
    x, y = load_npz(data_dir / "train.npz")
    classes = len(class_names(data_dir))
    batch = training.global_batch_size(config.train.batch_size, strategy)
    digits = tf.data.Dataset.from_tensor_slices(
        (as_input(x), np.eye(classes, dtype=np.float32)[y])
    ).shuffle(len(y), seed=runtime.seed)
    seeds = tf.data.Dataset.random(seed=runtime.seed).batch(2)  # a crop seed per digit
    dataset = (
        tf.data.Dataset.zip(digits, seeds)
        .map(
            lambda digit, seed: (shifted(digit[0], config.train.max_shift, seed), digit[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    validation = batches(*load_npz(data_dir / "validation.npz"), batch, classes)
    steps = config.train.epochs * math.ceil(len(y) / batch)
    with strategy.scope():
        model = build(config, training.cosine_adam(config.train.learning_rate, steps), classes)
    history = training.fit(
        model,
        dataset,
        validation,
        config.train.epochs,
        curves,
        backup,
        patience=config.train.patience,
    )
    return model, {**training.best_epoch(history), **validation_figures(config, model, data_dir)}


def validation_figures(config: Config, model: keras.Model, data_dir: Path) -> dict[str, float]:
    """Digit accuracy and the stacked two-digit test on the validation split."""
    x, y = load_npz(data_dir / "validation.npz")
    pair_x, pair_y = load_npz(data_dir / "validation_pairs.npz")
    batch = config.serve.batch_size
    stacked = scores(model, two_digit_images(pair_x, "stacked"), batch)
    return {
        "validation_acc": float(correct(scores(model, x, batch), y).mean()),
        "validation_pair_acc": float(pair_hits(stacked, pair_y).mean()),
    }


def train(config, runtime, data_dir: Path, vocab_file, model_dir: Path, curves_file: Path):
    model, figures = fit(
        build_capsule_model, config, runtime, data_dir, curves_file, Path(runtime.backup_dir)
    )
    training.save_model(model, model_dir / MODEL_FILE)
    io.write_json(model_dir / CLASSES_FILE, class_names(data_dir))
    return figures


def train_baselines(
    config, runtime, data_dir: Path, vocab_file, baselines_dir: Path, curves_dir: Path
) -> dict[str, float]:
    """The post's CNN on the same digits, with the capsule net's rate, schedule, most epochs
    and early stopping (its rate is not tuned for either network)."""
    model, figures = fit(
        build_cnn_model,
        config,
        runtime,
        data_dir,
        curves_dir / "cnn.csv",
        Path(runtime.backup_dir) / "cnn",
    )
    training.save_model(model, baselines_dir / BASELINE_FILE)
    return {f"cnn_{name}": value for name, value in figures.items()}


# -- evaluation ---------------------------------------------------------------------------


def scores(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return model.predict(as_input(images), batch_size=batch_size, verbose=0)


def correct(class_scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per digit: 1 where the best class is the label, else 0."""
    return (np.argmax(class_scores, axis=1) == labels).astype(np.float64)


def pair_hits(class_scores: np.ndarray, pairs: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Per two-digit image: 1 where its two best classes are exactly the two digits shown and
    both score above `threshold` (the post also reports it at 0.5: found *and* sure)."""
    best2 = np.argsort(-class_scores, axis=1)[:, :2]
    found = (np.sort(best2, axis=1) == np.sort(pairs, axis=1)).all(axis=1)
    sure = np.take_along_axis(class_scores, best2, axis=1).min(axis=1) > threshold
    return (found & sure).astype(np.float64)


# The two-digit figures: metric -> (layout, threshold).
PAIR_METRICS = {
    "pair_acc": ("stacked", 0.0),
    "pair_sure_acc": ("stacked", SURE),
    "pair_side_acc": ("side", 0.0),
}
SHOWN = {
    "acc": "one digit",
    "pair_acc": "two digits stacked",
    "pair_sure_acc": "two digits stacked, both lengths > 0.5",
    "pair_side_acc": "two digits side by side",
}


def evaluate(
    config,
    data_dir: Path,
    vocab_file,
    model_dir: Path,
    plots_dir: Path,
    baselines_dir: Path | None = None,
):
    """Per-digit accuracy and per-pair two-digit hits on the test split, for the capsule
    model and its CNN baseline (trained by the baseline stage; the model alone without
    `baselines_dir`); the files prepare skipped as
    unreadable are counted in `skipped_images`. Labels are read as the model's classes
    (its classes.json); a class it was not trained on is one it cannot read."""
    classes = io.read_json(model_dir / CLASSES_FILE)
    as_model = model_labels(class_names(data_dir), classes, data_dir)
    test_x, test_y = load_npz(data_dir / "test.npz")
    pair_x, pair_y = load_npz(data_dir / "pairs.npz")
    test_y, pair_y = as_model[test_y], as_model[pair_y]
    batch = config.serve.batch_size
    systems = {"capsule": keras.models.load_model(model_dir / MODEL_FILE, compile=False)}
    if baselines_dir is not None:
        systems["cnn"] = keras.models.load_model(baselines_dir / BASELINE_FILE, compile=False)
    layouts = {layout: two_digit_images(pair_x, layout) for layout in LAYOUT_AXES}
    values: dict[str, dict[str, np.ndarray]] = {metric: {} for metric in SHOWN}
    for name, model in systems.items():
        digit_scores = scores(model, test_x, batch)
        values["acc"][name] = correct(digit_scores, test_y)
        layout_scores = {layout: scores(model, images, batch) for layout, images in layouts.items()}
        for metric, (layout, threshold) in PAIR_METRICS.items():
            values[metric][name] = pair_hits(layout_scores[layout], pair_y, threshold)
        if name == "capsule":
            predicted = np.argmax(digit_scores, axis=1)
            io.write_confusion(
                plots_dir / "confusion.json",
                [classes[d] for d in test_y],
                [classes[d] for d in predicted],
            )
    rows = [
        {"system": f"{name}, {SHOWN[metric]}", "accuracy": float(values[metric][name].mean())}
        for name in systems
        for metric in SHOWN
    ]
    io.write_json(plots_dir / "accuracy.json", rows)
    scored = [
        stats.Scores(
            metric,
            by_system["capsule"],
            {name: hit for name, hit in by_system.items() if name != "capsule"},
        )
        for metric, by_system in values.items()
    ]
    seen = [
        x.tobytes()
        for side in ("train", "validation")
        for x in load_npz(data_dir / f"{side}.npz")[0]
    ]
    metrics = {
        "test_digits": len(test_y),
        "test_pairs": len(pair_y),
        "test_overlap": splits.overlap((x.tobytes() for x in test_x), seen),
        "skipped_images": io.read_json(data_dir / COUNTS_FILE)["skipped"],
    }
    return metrics, scored


# -- serving ------------------------------------------------------------------------------


class DigitsPyfunc(mlflow.pyfunc.PythonModel):
    """Column `image` in; columns `digit`, `top2`, `scores`, `label`, `top2_labels` out, a
    row per image."""

    def load_context(self, context):
        self.settings = context.model_config
        self.classes = io.read_json(context.artifacts["classes"])
        model = keras.models.load_model(context.artifacts["model"], compile=False)
        # One trace per image width, not per call.
        self.run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        settings = self.settings
        values = serving.image_column(model_input, settings["max_images"])
        out = {"digit": [], "top2": [], "scores": [], "label": [], "top2_labels": []}
        for row, value in enumerate(values):
            image = to_image(value, row, settings["max_side"])
            class_scores = self.run(tf.constant(image[None, ..., None])).numpy()[0]
            best = np.argsort(-class_scores)
            out["digit"].append(int(best[0]))
            out["top2"].append([int(d) for d in best[:2]])
            out["scores"].append([float(s) for s in class_scores])
            out["label"].append(self.classes[best[0]])
            out["top2_labels"].append([self.classes[d] for d in best[:2]])
        return pd.DataFrame(out)


def to_image(value, row: int, max_side: int) -> np.ndarray:
    """float32 (h, w) in 0..1, the shorter side 28, from PNG/JPEG bytes, base64 text of them,
    or a 2-D array."""
    if isinstance(value, (str, bytes, bytearray)):
        try:
            decoded = tf.io.decode_image(
                serving.image_bytes(value, row), channels=1, expand_animations=False
            )
        except tf.errors.InvalidArgumentError:
            raise serving.bad_request(f"row {row}: 'image' is not a PNG or JPEG image") from None
        pixels = decoded.numpy()[..., 0].astype(np.float32) / 255
    else:
        try:
            pixels = np.asarray(
                [list(r) for r in value] if not isinstance(value, np.ndarray) else value,
                dtype=np.float32,
            )
        except (TypeError, ValueError):
            pixels = np.empty(0)
        if pixels.ndim != 2 or not np.isfinite(pixels).all():
            raise serving.bad_request(
                f"row {row}: 'image' must be PNG/JPEG bytes, base64 text or a 2-D array of numbers"
            )
    if min(pixels.shape) < 1:
        raise serving.bad_request(f"row {row}: 'image' is empty")
    # A digit is 28 pixels across: the shorter side becomes 28, the longer holds the digits.
    scale = SIDE / min(pixels.shape)
    size = tuple(max(SIDE, round(side * scale)) for side in pixels.shape)
    if max(size) > max_side:
        raise serving.bad_request(
            f"row {row}: 'image' is {max(size)} pixels long when its shorter side is {SIDE}; "
            f"the limit is {max_side}"
        )
    if size != pixels.shape:
        pixels = tf.image.resize(pixels[..., None], size).numpy()[..., 0]
    return pixels


def input_example() -> pd.DataFrame:
    """A request as an HTTP client sends one, saved beside the exported model: a drawn one
    (a white stroke on black, as MNIST) at the digits' size, a PNG in base64 text."""
    pixels = np.zeros((SIDE, SIDE, 1), np.uint8)
    pixels[SIDE // 5 : -SIDE // 5, SIDE // 2 - 1 : SIDE // 2 + 1] = 255
    return pd.DataFrame({"image": [serving.png_base64(pixels)]})


def pyfunc(config: Config, vocab_file, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model. `image` is of any type: a cell may
    hold bytes, base64 text or a 2-D array, which `to_image` tells apart and checks itself."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType, Array

    return {
        "python_model": DigitsPyfunc(),
        "artifacts": {
            "model": str(model_dir / MODEL_FILE),
            "classes": str(model_dir / CLASSES_FILE),
        },
        "model_config": {
            "max_images": config.serve.max_images,
            "max_side": config.serve.max_side,
        },
        "signature": ModelSignature(
            inputs=Schema([ColSpec(AnyType(), "image")]),
            outputs=Schema(
                [
                    ColSpec(DataType.long, "digit"),
                    ColSpec(DataType.string, "label"),
                    ColSpec(Array(DataType.long), "top2"),
                    ColSpec(Array(DataType.string), "top2_labels"),
                    ColSpec(Array(DataType.double), "scores"),
                ]
            ),
        ),
        "input_example": input_example(),
    }
