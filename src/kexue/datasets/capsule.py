"""The capsule model's params block and its data: MNIST (or your own folder of images)
split into train / validation / test, and the two-digit test images.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from kexue import io, splits
from kexue.data.images import COUNTS_FILE, FolderSplitConfig, read_image_folder
from kexue.data.mnist import SIDE, read_mnist
from kexue.errors import DataError, IncompatibleDataError

CLASSES_FILE = "classes.json"  # the class names in label order, prepared and with the model


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
    # TensorFlow only for a folder of images: preparing MNIST, the default, starts without it.
    from kexue.data.image_tensors import resize

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
