"""Capsule network on MNIST with the two-digit test, after "揭开迷雾，来一顿美味的Capsule盛宴".

The post's model: a small CNN front end -> its feature map read as a set of capsules ->
`Capsule` (10 classes, dynamic routing) -> each class capsule's length, trained with the margin
loss. Its baseline: the same front end -> global average pooling -> dense -> 10 sigmoids.

The post's test: train on single digits, then show two different digits side by side
(28 x 56) and ask for the two highest-scoring classes. Both models accept any image width
(shared capsule weights; global pooling), so the test needs no retraining; the capsule model
should find both digits far more often than the CNN, whose pooled features blur the two.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, training
from kexue.errors import DataError
from kexue.layers.capsule import Capsule, CapsuleLength, MarginLoss

MODEL_FILE = "model.keras"
SCORE = "acc"
DESCRIPTION = (
    "Capsule network (kexue.fm, Capsule盛宴) on MNIST. Input: a column `image` of PNG/JPEG "
    "bytes or base64 text, or 28-pixel-high arrays (white digit on black, 0..1), any width. "
    "Output: `digit` (best class), `top2` (two best, for two digits side by side), `scores`."
)
SIDE = 28  # MNIST images are 28 x 28
CLASSES = 10


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
class TrainConfig:  # both models alike
    epochs: int
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class ServeConfig:
    max_images: int  # per request
    max_width: int  # pixels, after scaling to 28 high
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
    """mnist.pkl.gz -> train.npz, test.npz (uint8 images, labels) and pairs.npz (28 x 56)."""
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


def read_mnist(path: Path):
    """((train x, y), (test x, y)): the official 60k/10k split, images uint8 (n, 28, 28).
    The pickle comes from a hash-checked archive (sources.mnist), so unpickling it is safe."""
    try:
        with gzip.open(path) as file:
            train, valid, test = pickle.load(file, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise DataError(f"{path}: expected MNIST's (train, valid, test) pickle: {err}") from None

    def images(split):
        x, y = split
        pixels = np.rint(np.asarray(x, dtype=np.float32) * 256).clip(0, 255).astype(np.uint8)
        return pixels.reshape(-1, SIDE, SIDE), np.asarray(y, dtype=np.int64)

    (tx, ty), (vx, vy) = images(train), images(valid)
    return (np.concatenate([tx, vx]), np.concatenate([ty, vy])), images(test)


def sample(rng, x, y, size: int | None):
    if size is None or size >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), size, replace=False))
    return x[keep], y[keep]


def digit_pairs(rng, x, y, count: int):
    """`count` images of two different digits side by side, labels (left, right)."""
    left = rng.integers(0, len(y), count)
    right = rng.integers(0, len(y), count)
    same = y[left] == y[right]
    while same.any():  # redraw until every pair shows two different digits
        right[same] = rng.integers(0, len(y), int(same.sum()))
        same = y[left] == y[right]
    return np.concatenate([x[left], x[right]], axis=2), np.stack([y[left], y[right]], axis=1)


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


def build_capsule_model(config: Config) -> keras.Model:
    images = keras.Input(shape=(None, None, 1), name="image")
    features = front_end(config.model, images)
    capsules = keras.layers.Reshape((-1, config.model.conv_filters[-1]))(features)
    digits = Capsule(CLASSES, config.model.capsule_dim, config.model.routings, name="digits")(
        capsules
    )
    model = keras.Model(images, CapsuleLength(name="lengths")(digits), name="capsule")
    model.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate),
        loss=MarginLoss(config.loss.upper, config.loss.lower, config.loss.down_weight),
        metrics=["categorical_accuracy"],
    )
    return model


def build_cnn_model(config: Config) -> keras.Model:
    images = keras.Input(shape=(None, None, 1), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(front_end(config.model, images))
    hidden = keras.layers.Dense(config.model.cnn_dense, activation="relu")(pooled)
    scores = keras.layers.Dense(CLASSES, activation="sigmoid")(hidden)
    model = keras.Model(images, scores, name="cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate),
        loss="binary_crossentropy",
        metrics=["categorical_accuracy"],
    )
    return model


def fit(build, config: Config, runtime, data_dir: Path, curves: Path, backup: Path):
    strategy = training.setup(runtime)
    x, y = load_npz(data_dir / "train.npz")
    batch = training.global_batch_size(config.train.batch_size, strategy)
    dataset = (
        tf.data.Dataset.from_tensor_slices((as_input(x), np.eye(CLASSES, dtype=np.float32)[y]))
        .shuffle(len(y), seed=runtime.seed)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    with strategy.scope():
        model = build(config)
    training.fit(model, dataset, None, config.train.epochs, curves, backup)
    return model


def train(config, runtime, data_dir: Path, vocab_file, model_dir: Path, curves_file: Path):
    model = fit(
        build_capsule_model, config, runtime, data_dir, curves_file, Path(runtime.backup_dir)
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


def pair_accuracy(class_scores: np.ndarray, pairs: np.ndarray) -> float:
    """Share of two-digit images whose two best classes are exactly the two digits shown."""
    top2 = np.sort(np.argsort(-class_scores, axis=1)[:, :2], axis=1)
    return float(np.mean((top2 == np.sort(pairs, axis=1)).all(axis=1)))


def evaluate(config, data_dir: Path, vocab_file, model_dir: Path, plots_dir: Path, runtime):
    """Single-digit accuracy and the two-digit test, for the capsule model and for the CNN
    baseline trained here on the same digits."""
    test_x, test_y = load_npz(data_dir / "test.npz")
    pair_x, pair_y = load_npz(data_dir / "pairs.npz")
    batch = config.serve.batch_size
    capsule = keras.models.load_model(model_dir / MODEL_FILE, compile=False)
    cnn = fit(
        build_cnn_model,
        config,
        runtime,
        data_dir,
        plots_dir / "cnn_train.csv",
        Path(runtime.backup_dir) / "cnn",
    )
    metrics, rows = {}, []
    for name, model in (("", capsule), ("cnn_", cnn)):
        single = scores(model, test_x, batch)
        pairs = scores(model, pair_x, batch)
        metrics[f"{name}acc"] = accuracy(single, test_y)
        metrics[f"{name}pair_acc"] = pair_accuracy(pairs, pair_y)
        label = name.rstrip("_") or "capsule"
        rows += [
            {"system": f"{label}, {test}", "accuracy": metrics[key]}
            for test, key in (("one digit", f"{name}acc"), ("two digits", f"{name}pair_acc"))
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
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise serving.bad_request("expected a column 'image'")
        values = model_input["image"].tolist()
        if not values:
            raise serving.bad_request("input has no rows; send at least one image")
        if len(values) > settings["max_images"]:
            raise serving.bad_request(
                f"input has {len(values)} images; the limit per request is {settings['max_images']}"
            )
        out = {"digit": [], "top2": [], "scores": []}
        for row, value in enumerate(values):
            image = to_image(value, row, settings["max_width"])
            class_scores = self.run(tf.constant(image[None, ..., None])).numpy()[0]
            best = np.argsort(-class_scores)
            out["digit"].append(int(best[0]))
            out["top2"].append([int(d) for d in best[:2]])
            out["scores"].append([float(s) for s in class_scores])
        return pd.DataFrame(out)


def to_image(value, row: int, max_width: int) -> np.ndarray:
    """float32 (28, w) in 0..1 from PNG/JPEG bytes, base64 text of them, or a 2-D array."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise serving.bad_request(f"row {row}: 'image' text is not base64") from None
    if isinstance(value, (bytes, bytearray)):
        try:
            decoded = tf.io.decode_image(bytes(value), channels=1, expand_animations=False)
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
    height, width = pixels.shape
    if height < 1 or width < 1:
        raise serving.bad_request(f"row {row}: 'image' is empty")
    scaled_width = max(SIDE, round(width * SIDE / height))
    if scaled_width > max_width:
        raise serving.bad_request(
            f"row {row}: 'image' is {scaled_width} pixels wide at height {SIDE}; "
            f"the limit is {max_width}"
        )
    if (height, width) != (SIDE, scaled_width):
        pixels = tf.image.resize(pixels[..., None], (SIDE, scaled_width)).numpy()[..., 0]
    return pixels


def pyfunc(config: Config, vocab_file, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model. No input schema: a column may hold
    bytes, base64 text or arrays, which `to_image` tells apart and checks itself."""
    return {
        "python_model": DigitsPyfunc(),
        "artifacts": {"model": str(model_dir / MODEL_FILE)},
        "model_config": {
            "max_images": config.serve.max_images,
            "max_width": config.serve.max_width,
        },
    }
