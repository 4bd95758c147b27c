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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from kexue import io, serving, splits, stats, training
from kexue.data.images import COUNTS_FILE, FolderSplitConfig, read_image_folder, resize
from kexue.data.mnist import SIDE, read_mnist
from kexue.errors import DataError, IncompatibleDataError
from kexue.layers.capsule import Capsule, CapsuleLength, MarginLoss

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"  # the class names in label order, prepared and with the model
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


@dataclass(frozen=True)
class DataConfig:
    source: Literal["mnist", "folder"]
    folder: str  # source folder: a class-per-folder tree (images.FOLDER_LAYOUT)
    folder_split: FolderSplitConfig  # source folder: its validation and test parts
    validation_fraction: float  # mnist: of the 60k training digits (the 10k are the test)
    split_seed: int  # also the folder's split
    train_size: int | None  # training images used (seeded sample of the rest); None: all
    test_size: int | None  # of the test images (MNIST's 10k); None: all
    pairs: int  # two-digit images, each from two images of different classes of one split
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
class TrainConfig:  # the capsule net and its CNN baseline alike
    epochs: int  # the most; each stops early on the validation loss
    patience: int  # epochs without a lower validation loss before stopping
    max_shift: int  # training digits move by up to this many pixels each way (0: as given)
    batch_size: int
    learning_rate: float  # decays to 0 over `epochs` (cosine)


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


def inputs(config: Config, corpora: list[Path]) -> list[Path]:
    """What `prepare` reads: MNIST (the corpus) or the folder `data.folder`."""
    return [Path(config.data.folder)] if config.data.source == "folder" else corpora


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """MNIST (mnist.pkl.gz, the one corpus) or the folder of `data.folder` -> train.npz,
    validation.npz, test.npz (uint8 images, labels), validation_pairs.npz, pairs.npz (two
    images of different classes of that split each, uint8 (n, 2, 28, 28), and their labels),
    classes.json and counts.json (also the files skipped as unreadable). MNIST's validation
    comes out of the 60k training digits, its test is the official 10k; a folder is split by
    `data.folder_split`. A validation or test image byte for byte equal to one on an earlier
    side is dropped."""
    data = config.data
    if data.source == "mnist":
        classes, held_out, skipped = [str(d) for d in range(10)], mnist_splits(data, corpora), 0
    else:
        classes, held_out, skipped = folder_splits(data)
    rng = np.random.default_rng(data.seed)
    arrays = {
        "train": sample(rng, *held_out["train"], data.train_size),
        "validation": held_out["validation"],
        "test": sample(rng, *held_out["test"], data.test_size),
    }
    indexed = {side: [(side, i) for i in range(len(y))] for side, (_, y) in arrays.items()}
    kept, dropped = splits.drop_overlap(indexed, lambda item: arrays[item[0]][0][item[1]].tobytes())
    counts = {}
    for side, items in kept.items():
        x, y = arrays[side]
        keep = np.asarray([i for _, i in items], dtype=np.int64)
        save_npz(out_dir / f"{side}.npz", x=x[keep], y=y[keep])
        counts[side] = len(keep)
        if side != "train":
            if len(np.unique(y[keep])) < 2:
                raise DataError(
                    f"capsule: the {side} split holds one class once images equal to earlier "
                    "ones are dropped; expected two or more for the two-image pairs"
                )
            pair_x, pair_y = digit_pairs(rng, x[keep], y[keep], data.pairs)
            name = "pairs" if side == "test" else f"{side}_pairs"
            save_npz(out_dir / f"{name}.npz", x=pair_x, y=pair_y)
    summary = {**counts, "pairs": data.pairs, **dropped, "skipped": skipped}
    io.write_json(out_dir / CLASSES_FILE, classes)
    io.write_json(out_dir / COUNTS_FILE, summary)
    return summary


def mnist_splits(data: DataConfig, corpora: list[Path]) -> dict[str, tuple]:
    """{side: (images, labels)}: a seeded fraction of the 60k training digits is validation,
    the official 10k are the test."""
    if len(corpora) != 1:
        raise DataError(f"capsule reads one mnist.pkl.gz, got {len(corpora)} files")
    (train_x, train_y), (test_x, test_y) = read_mnist(corpora[0])
    sides = splits.split_groups(
        range(len(train_y)),
        int,
        splits.SplitConfig(data.validation_fraction, 0.0, data.split_seed),
        "capsule: MNIST",
    )
    return {
        "train": (train_x[sides["train"]], train_y[sides["train"]]),
        "validation": (train_x[sides["validation"]], train_y[sides["validation"]]),
        "test": (test_x, test_y),
    }


def folder_splits(data: DataConfig) -> tuple[list[str], dict[str, tuple], int]:
    """(class names, {side: (images, labels)}, files skipped) of the folder `data.folder`,
    read and split as dogs' images are (read_image_folder), each image grey 28 x 28."""
    listings, skipped = read_image_folder(
        Path(data.folder), data.folder_split, data.split_seed, grey_pixels, "capsule.data"
    )
    classes = sorted({name for _, name in listings["train"]})
    label = {name: i for i, name in enumerate(classes)}
    arrays = {
        side: (np.stack([x for x, _ in items]), np.asarray([label[n] for _, n in items]))
        for side, items in listings.items()
    }
    return classes, arrays, skipped


def grey_pixels(path: Path, image: Image.Image) -> np.ndarray:
    """A decoded image (any mode, any size) as uint8 (28, 28): grey, resized the way dogs'
    images are (`resize`: bilinear, anti-aliased when shrinking)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)[None, ..., None]
    return np.rint(resize(grey, SIDE)[0, ..., 0].numpy()).clip(0, 255).astype(np.uint8)


def class_names(data_dir: Path) -> list[str]:
    """The prepared classes' names, in label order."""
    return io.read_json(data_dir / CLASSES_FILE)


def model_labels(prepared: list[str], trained: list[str], data_dir: Path) -> np.ndarray:
    """The label a model trained on `trained` classes gives each `prepared` class (by index);
    IncompatibleDataError for a class it never saw."""
    unknown = [name for name in prepared if name not in trained]
    if unknown:
        raise IncompatibleDataError(
            f"{data_dir / CLASSES_FILE}: class {unknown[0]!r} is not one of "
            f"the {len(trained)} classes the model was trained on"
        )
    return np.array([trained.index(name) for name in prepared], dtype=np.int64)


def sample(rng, x, y, size: int | None):
    if size is None or size >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), size, replace=False))
    return x[keep], y[keep]


def digit_pairs(rng, x, y, count: int):
    """`count` pairs of digits of different classes (n, 2, 28, 28), labels (n, 2)."""
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
