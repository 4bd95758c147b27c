"""Capsule network on MNIST with the two-digit test, after "揭开迷雾，来一顿美味的Capsule盛宴".

The post's model: a small CNN front end -> its feature map read as a set of capsules ->
`Capsule` (10 classes, dynamic routing) -> each class capsule's length, trained with the margin
loss. Its baseline: the same front end -> global average pooling -> dense -> 10 sigmoids,
trained with the same loss.

The post's test: train on single digits, then show two different digits in one image (the
post stacks them, 56 x 28; side by side, 28 x 56, is reported too) and ask for the two
highest-scoring classes. Both models accept any image width
(shared capsule weights; global pooling), so the test needs no retraining; the capsule model
should find both digits far more often than the CNN, whose pooled features blur the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, training
from kexue.data.mnist import SIDE, read_mnist
from kexue.errors import DataError
from kexue.layers.capsule import Capsule, CapsuleLength, MarginLoss

MODEL_FILE = "model.keras"
SCORE = "acc"
DESCRIPTION = (
    "Capsule network (kexue.fm, Capsule盛宴) on MNIST. Input: a column `image` of PNG/JPEG "
    "bytes or base64 text, or 2-D arrays (white digit on black, 0..1); the shorter side is "
    "scaled to 28 pixels, the longer may hold several digits. Output: `digit` (best class), "
    "`top2` (two best, for two digits in one image), `scores` (each class capsule's length)."
)
CLASSES = 10
SURE = 0.5  # a length above this says "present"; the post's second two-digit accuracy


@dataclass(frozen=True)
class DataConfig:
    train_size: int | None  # training digits used (seeded sample of the 60k); None: all
    test_size: int | None  # of the 10k test digits; None: all
    pairs: int  # two-digit test images, built from test digits of different classes
    seed: int


@dataclass(frozen=True)
class ModelConfig:
    conv_filters: list[int]  # 3x3 convs; average pooling after the first half, as the post
    capsule_dim: int
    routings: int
    cnn_dense: int  # the baseline's hidden layer


@dataclass(frozen=True)
class LossConfig:
    upper: float  # a present class's length should reach this
    lower: float  # an absent class's length should stay below this
    down_weight: float  # weight of the absent classes' term


@dataclass(frozen=True)
class TrainConfig:  # both models alike, but for the baseline's epochs and rate
    epochs: int
    baseline_epochs: int  # the CNN's (the post trains it 20 epochs)
    max_shift: int  # training digits move by up to this many pixels each way (0: as given)
    batch_size: int
    learning_rate: float
    baseline_learning_rate: float  # the CNN's; each rate decays to 0 over its run


@dataclass(frozen=True)
class ServeConfig:
    max_images: int  # per request
    max_side: int  # pixels of the longer side, once the shorter is scaled to 28
    batch_size: int


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    serve: ServeConfig
    registered_name: str


# -- data ---------------------------------------------------------------------------------


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """mnist.pkl.gz -> train.npz, test.npz (uint8 images, labels) and pairs.npz (two test
    digits each, uint8 (n, 2, 28, 28), and their labels)."""
    if len(corpora) != 1:
        raise DataError(f"capsule reads one mnist.pkl.gz, got {len(corpora)} files")
    (train_x, train_y), (test_x, test_y) = read_mnist(corpora[0])
    rng = np.random.default_rng(config.data.seed)
    train_x, train_y = sample(rng, train_x, train_y, config.data.train_size)
    test_x, test_y = sample(rng, test_x, test_y, config.data.test_size)
    pair_x, pair_y = digit_pairs(rng, test_x, test_y, config.data.pairs)
    save_npz(out_dir / "train.npz", x=train_x, y=train_y)
    save_npz(out_dir / "test.npz", x=test_x, y=test_y)
    save_npz(out_dir / "pairs.npz", x=pair_x, y=pair_y)
    return {"train": len(train_y), "test": len(test_y), "pairs": len(pair_y)}


def sample(rng, x, y, size: int | None):
    if size is None or size >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), size, replace=False))
    return x[keep], y[keep]


def digit_pairs(rng, x, y, count: int):
    """`count` pairs of test digits of different classes (n, 2, 28, 28), labels (n, 2)."""
    left = rng.integers(0, len(y), count)
    right = rng.integers(0, len(y), count)
    same = y[left] == y[right]
    while same.any():  # redraw until every pair shows two different digits
        right[same] = rng.integers(0, len(y), int(same.sum()))
        same = y[left] == y[right]
    return np.stack([x[left], x[right]], axis=1), np.stack([y[left], y[right]], axis=1)


# How the two digits of a pair share one image: the post stacks them (its test images are
# 56 x 28); side by side (28 x 56) is the other way to read "two digits in one image".
LAYOUT_AXES = {"stacked": 1, "side": 2}


def two_digit_images(pairs: np.ndarray, layout: str) -> np.ndarray:
    """(n, 2, 28, 28) digit pairs -> (n, 56, 28) stacked or (n, 28, 56) side-by-side images."""
    return np.concatenate([pairs[:, 0], pairs[:, 1]], axis=LAYOUT_AXES[layout])


def save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["x"], data["y"]


def as_input(images: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w) -> float32 (n, h, w, 1) in 0..1."""
    return (images.astype(np.float32) / 255)[..., None]


# -- models -------------------------------------------------------------------------------


def front_end(config: ModelConfig, images):
    """The post's CNN: 3x3 ReLU convs, average pooling halfway; any image size."""
    half = len(config.conv_filters) // 2
    features = images
    for i, filters in enumerate(config.conv_filters):
        if i == half:
            features = keras.layers.AveragePooling2D(2)(features)
        features = keras.layers.Conv2D(filters, 3, activation="relu")(features)
    return features


def build_capsule_model(config: Config, optimizer: keras.optimizers.Optimizer) -> keras.Model:
    images = keras.Input(shape=(None, None, 1), name="image")
    features = front_end(config.model, images)
    capsules = keras.layers.Reshape((-1, config.model.conv_filters[-1]))(features)
    digits = Capsule(CLASSES, config.model.capsule_dim, config.model.routings, name="digits")(
        capsules
    )
    model = keras.Model(images, CapsuleLength(name="lengths")(digits), name="capsule")
    return compiled(model, config.loss, optimizer)


def build_cnn_model(config: Config, optimizer: keras.optimizers.Optimizer) -> keras.Model:
    images = keras.Input(shape=(None, None, 1), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(front_end(config.model, images))
    hidden = keras.layers.Dense(config.model.cnn_dense, activation="relu")(pooled)
    scores = keras.layers.Dense(CLASSES, activation="sigmoid")(hidden)
    return compiled(keras.Model(images, scores, name="cnn"), config.loss, optimizer)


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


def fit(
    build,
    epochs: int,
    learning_rate: float,
    config: Config,
    runtime,
    data_dir: Path,
    curves: Path,
    backup: Path,
):
    strategy = training.setup(runtime)
    x, y = load_npz(data_dir / "train.npz")
    batch = training.global_batch_size(config.train.batch_size, strategy)
    digits = tf.data.Dataset.from_tensor_slices(
        (as_input(x), np.eye(CLASSES, dtype=np.float32)[y])
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
    steps = epochs * math.ceil(len(y) / batch)
    with strategy.scope():
        model = build(config, training.cosine_adam(learning_rate, steps))
    training.fit(model, dataset, None, epochs, curves, backup)
    return model


def train(config, runtime, data_dir: Path, vocab_file, model_dir: Path, curves_file: Path):
    model = fit(
        build_capsule_model,
        config.train.epochs,
        config.train.learning_rate,
        config,
        runtime,
        data_dir,
        curves_file,
        Path(runtime.backup_dir),
    )
    training.save_model(model, model_dir / MODEL_FILE)
    history = model.history.history
    return {
        "final_loss": history["loss"][-1],
        "final_accuracy": history["categorical_accuracy"][-1],
    }


# -- evaluation ---------------------------------------------------------------------------


def scores(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return model.predict(as_input(images), batch_size=batch_size, verbose=0)


def accuracy(class_scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(class_scores, axis=1) == labels))


def pair_accuracy(class_scores: np.ndarray, pairs: np.ndarray, threshold: float = 0.0) -> float:
    """Share of two-digit images whose two best classes are exactly the two digits shown and
    both score above `threshold` (the post also reports it at 0.5: found *and* sure)."""
    best2 = np.argsort(-class_scores, axis=1)[:, :2]
    found = (np.sort(best2, axis=1) == np.sort(pairs, axis=1)).all(axis=1)
    sure = np.take_along_axis(class_scores, best2, axis=1).min(axis=1) > threshold
    return float(np.mean(found & sure))


def evaluate(config, data_dir: Path, vocab_file, model_dir: Path, plots_dir: Path, runtime):
    """Single-digit accuracy and the two-digit test, for the capsule model and for the CNN
    baseline trained here on the same digits."""
    test_x, test_y = load_npz(data_dir / "test.npz")
    pair_x, pair_y = load_npz(data_dir / "pairs.npz")
    batch = config.serve.batch_size
    capsule = keras.models.load_model(model_dir / MODEL_FILE, compile=False)
    cnn = fit(
        build_cnn_model,
        config.train.baseline_epochs,
        config.train.baseline_learning_rate,
        config,
        runtime,
        data_dir,
        plots_dir / "cnn_train.csv",
        Path(runtime.backup_dir) / "cnn",
    )
    stacked, side = (two_digit_images(pair_x, layout) for layout in ("stacked", "side"))
    metrics, rows = {}, []
    for name, model in (("", capsule), ("cnn_", cnn)):
        stacked_scores, digit_scores = scores(model, stacked, batch), scores(model, test_x, batch)
        metrics[f"{name}acc"] = accuracy(digit_scores, test_y)
        if model is capsule:
            predicted = np.argmax(digit_scores, axis=1)
            io.write_confusion(
                plots_dir / "confusion.json", [str(d) for d in test_y], [str(d) for d in predicted]
            )
        metrics[f"{name}pair_acc"] = pair_accuracy(stacked_scores, pair_y)
        metrics[f"{name}pair_sure_acc"] = pair_accuracy(stacked_scores, pair_y, SURE)
        metrics[f"{name}pair_side_acc"] = pair_accuracy(scores(model, side, batch), pair_y)
        label = name.rstrip("_") or "capsule"
        rows += [
            {"system": f"{label}, {test}", "accuracy": metrics[f"{name}{key}"]}
            for test, key in (
                ("one digit", "acc"),
                ("two digits stacked", "pair_acc"),
                ("two digits stacked, both lengths > 0.5", "pair_sure_acc"),
                ("two digits side by side", "pair_side_acc"),
            )
        ]
    io.write_json(plots_dir / "accuracy.json", rows)
    metrics.update(test_digits=len(test_y), test_pairs=len(pair_y))
    return metrics


# -- serving ------------------------------------------------------------------------------


class DigitsPyfunc(mlflow.pyfunc.PythonModel):
    """Column `image` in; columns `digit`, `top2`, `scores` out, a row per image."""

    def load_context(self, context):
        self.settings = context.model_config
        model = keras.models.load_model(context.artifacts["model"], compile=False)
        # One trace per image width, not per call.
        self.run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        settings = self.settings
        values = serving.image_column(model_input, settings["max_images"])
        out = {"digit": [], "top2": [], "scores": []}
        for row, value in enumerate(values):
            image = to_image(value, row, settings["max_side"])
            class_scores = self.run(tf.constant(image[None, ..., None])).numpy()[0]
            best = np.argsort(-class_scores)
            out["digit"].append(int(best[0]))
            out["top2"].append([int(d) for d in best[:2]])
            out["scores"].append([float(s) for s in class_scores])
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


def pyfunc(config: Config, vocab_file, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model. No input schema: a column may hold
    bytes, base64 text or arrays, which `to_image` tells apart and checks itself."""
    return {
        "python_model": DigitsPyfunc(),
        "artifacts": {"model": str(model_dir / MODEL_FILE)},
        "model_config": {
            "max_images": config.serve.max_images,
            "max_side": config.serve.max_side,
        },
    }
