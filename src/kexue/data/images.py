"""Class-per-folder image datasets: write them, read them, decode them.

The layout every reader here produces and every model reads:

    ROOT/{train,validation,test}/<class>/<image>     (PNG or JPEG, any size)

Validation is a seeded part of each class's training images, never of the test images; an
image byte for byte equal to one on an earlier side (train, then validation) is dropped.

Sources of it: MNIST digits written out as PNG files (the offline stand-in), Stanford Dogs
(`Images/<wnid>-<breed>/*.jpg` with the official `train_list.mat` / `test_list.mat`) and
Oxford-IIIT Pet (`images/<Breed>_<n>.jpg` with `annotations/{trainval,test}.txt`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import scipy.io
import tensorflow as tf
from PIL import Image

from kexue import splits
from kexue.data.sources import Source, fetch, replace_folder
from kexue.errors import DataError, IncompatibleDataError, ParamsError

SPLITS = ("train", "validation", "test")
SOURCE_SPLITS = ("train", "test")  # the published ones; validation comes out of train
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A split's images: (path relative to the images folder, class name), in a stable order.
Listing = list[tuple[str, str]]


@dataclass(frozen=True)
class ImageDataConfig:
    dataset: Literal["mnist", "stanford_dogs", "oxford_pet"]
    images_source: str | None  # key of `sources`: the archive of images (not for mnist)
    lists_source: str | None  # key of `sources`: the official train/test lists (not for mnist)
    train_per_class: int | None  # a seeded sample of each class; None: all
    validation_per_class: int  # of each class's training images, held out (seeded)
    test_per_class: int | None
    seed: int


def build_dataset(
    config: ImageDataConfig,
    out: Path,
    cache_dir: Path,
    sources: dict[str, Source],
    mnist: tuple | None = None,
) -> dict[str, int]:
    """Write the class-per-folder dataset to replace folder `out` as a whole (built beside
    it, then swapped in: a failure leaves the old `out`). `mnist` is ((train x, y), (test x,
    y)) for the stand-in; the published datasets are fetched from `sources` (verified,
    resumable, extracted safely). Returns the image count of each split and how many
    byte-identical held-out images were dropped."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if config.dataset == "mnist":
            if mnist is None:
                raise ParamsError("dogs.data.dataset: mnist needs the MNIST file (--mnist)")
            counts = _write_mnist(config, mnist, staged)
        else:
            counts = _move_published(config, sources, staged, cache_dir)
        dropped = drop_repeated_images(staged)
        replace_folder(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {
        **{split: counts[split] - dropped.get(f"{split}_overlap_dropped", 0) for split in SPLITS},
        **dropped,
    }


def _write_mnist(config: ImageDataConfig, mnist: tuple, out: Path) -> dict[str, int]:
    (train_x, train_y), (test_x, test_y) = mnist
    held = config.validation_per_class
    keep = array_sample(train_y, _plus(config.train_per_class, held), config.seed)
    train, validation = validation_split(train_y[keep], held, config.seed)
    test = array_sample(test_y, config.test_per_class, config.seed)
    return {
        "train": write_array_split(out, "train", train_x[keep[train]], train_y[keep[train]]),
        "validation": write_array_split(
            out, "validation", train_x[keep[validation]], train_y[keep[validation]]
        ),
        "test": write_array_split(out, "test", test_x[test], test_y[test]),
    }


def _plus(per_class: int | None, held: int) -> int | None:
    return None if per_class is None else per_class + held


def validation_split(labels, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training positions, validation positions) of `labels`: a seeded `per_class` of each
    class held out, leaving at least one of each class for training; both sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held = [
        rng.choice(where, min(per_class, len(where) - 1), replace=False)
        for where in (np.flatnonzero(labels == label) for label in np.unique(labels))
    ]
    validation = np.sort(np.concatenate(held)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), validation), validation


def drop_repeated_images(root: Path) -> dict[str, int]:
    """Delete each validation image byte for byte equal to a training image, and each test
    image equal to a training or validation image; the count dropped from each side."""
    files = {split: sorted((root / split).glob("*/*")) for split in SPLITS}
    digests = {path: file_digest(path) for paths in files.values() for path in paths}
    kept, dropped = splits.drop_overlap(files, digests.__getitem__)
    for split in ("validation", "test"):
        for path in set(files[split]) - set(kept[split]):
            path.unlink()
    return dropped


def file_digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _move_published(
    config: ImageDataConfig, sources: dict[str, Source], out: Path, cache_dir: Path
) -> dict[str, int]:
    raw = out / ".raw"
    folders = {}
    for role in ("images_source", "lists_source"):
        key = getattr(config, role)
        if key not in sources:
            raise ParamsError(f"params.yaml: dogs.data.{role}: expected a key of `sources`")
        folders[role] = fetch(sources[key], raw / role, cache_dir)
    if config.dataset == "stanford_dogs":
        images_dir = folders["images_source"] / "Images"
        lists = stanford_dogs_lists(folders["lists_source"])
    else:
        images_dir = folders["images_source"] / "images"
        lists = oxford_pet_lists(folders["lists_source"] / "annotations")
    held = config.validation_per_class
    listing = per_class_sample(lists["train"], _plus(config.train_per_class, held), config.seed)
    train, validation = validation_split([name for _, name in listing], held, config.seed)
    listings = {
        "train": [listing[i] for i in train],
        "validation": [listing[i] for i in validation],
        "test": per_class_sample(lists["test"], config.test_per_class, config.seed),
    }
    counts = {split: move_split(images_dir, listings[split], out, split) for split in SPLITS}
    shutil.rmtree(raw)
    return counts


# -- writing the layout ----------------------------------------------------------------------


def write_array_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray) -> int:
    """uint8 images (n, h, w) or (n, h, w, 3) -> PNG files out/split/<label>/<i>.png, 3-channel
    (the backbones take colour images). Returns the count."""
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1)
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{index:06d}.png")
    return len(labels)


def move_split(images_dir: Path, listing: Listing, out: Path, split: str) -> int:
    """Move the listed images into out/split/<class>/ (one file system: renames, no copies)."""
    for relative, class_name in listing:
        source = images_dir / relative
        if not source.is_file():
            raise DataError(f"{source}: listed in the {split} list but not in the archive")
        target = out / split / class_name / PurePosixPath(relative).name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    return len(listing)


def per_class_sample(listing: Listing, per_class: int | None, seed: int) -> Listing:
    """At most `per_class` images of each class, a seeded sample; None keeps all."""
    if per_class is None:
        return listing
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for item in listing:
        by_class.setdefault(item[1], []).append(item)
    kept = []
    for class_name in sorted(by_class):
        items = by_class[class_name]
        chosen = rng.choice(len(items), min(per_class, len(items)), replace=False)
        kept += [items[i] for i in sorted(chosen)]
    return kept


def array_sample(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of at most `per_class` items of each label, seeded and sorted."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(where, min(per_class, len(where)), replace=False)
        for where in (np.flatnonzero(labels == label) for label in np.unique(labels))
    ]
    return np.sort(np.concatenate(chosen))


# -- the published datasets' lists -----------------------------------------------------------


def stanford_dogs_lists(lists_dir: Path) -> dict[str, Listing]:
    """{'train': [...], 'test': [...]} from Stanford Dogs' train_list.mat / test_list.mat;
    a path there is `<wnid>-<breed>/<file>.jpg` under `Images/`, its folder the class."""
    lists = {}
    for split in SOURCE_SPLITS:
        path = lists_dir / f"{split}_list.mat"
        if not path.is_file():
            raise DataError(f"{path}: not found; expected Stanford Dogs' lists.tar contents")
        try:
            entries = scipy.io.loadmat(str(path))["file_list"]
        except (ValueError, KeyError, OSError) as err:
            raise DataError(f"{path}: expected a MATLAB file with `file_list` ({err})") from None
        names = [str(np.ravel(entry)[0]) for entry in np.ravel(entries)]
        lists[split] = [(name, _checked_class(path, name)) for name in names]
    return lists


def _checked_class(list_file: Path, name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or len(path.parts) != 2:
        raise DataError(f"{list_file}: entry {name!r}: expected <class folder>/<file>")
    return path.parts[0]


def oxford_pet_lists(annotations_dir: Path) -> dict[str, Listing]:
    """{'train': [...], 'test': [...]} from Oxford-IIIT Pet's trainval.txt / test.txt
    (`Abyssinian_100 1 1 1` a line); the class is the name without its number."""
    lists = {}
    for split, file_name in zip(SOURCE_SPLITS, ("trainval.txt", "test.txt"), strict=True):
        path = annotations_dir / file_name
        if not path.is_file():
            raise DataError(f"{path}: not found; expected Oxford-IIIT Pet's annotations")
        listing = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            name = line.split()[0]
            breed, _, index = name.rpartition("_")
            if not breed or not index.isdigit() or "/" in name:
                raise DataError(f"{path}:{number}: expected `<Breed>_<n> ...`, got {line!r}")
            listing.append((f"{name}.jpg", breed))
        lists[split] = listing
    return lists


# -- reading the layout ------------------------------------------------------------------------


def list_split(root: Path, split: str, classes: list[str] | None = None):
    """(paths, labels, classes) of root/split; `classes` (the training split's, sorted folder
    names) fixes the label ids; a class missing from it is one a model trained on them cannot
    read."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder}: not found; expected {root}/{split}/<class>/<image> files")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = found if classes is None else classes
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise IncompatibleDataError(f"{folder}/{unknown[0]}: class not in the training split")
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for name in found:
        for image in sorted((folder / name).iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(image))
                labels.append(index[name])
    if not paths:
        raise DataError(f"{folder}: no .png/.jpg images in class folders")
    return paths, np.asarray(labels, dtype=np.int64), classes


def encoded_shape(encoded: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's or JPEG's header, without decoding; None if neither."""
    if encoded.startswith(PNG_SIGNATURE) and len(encoded) >= 24:
        width, height = struct.unpack(">II", encoded[16:24])
        return height, width
    if encoded.startswith(b"\xff\xd8"):
        try:
            height, width, _ = tf.io.extract_jpeg_shape(encoded).numpy()
        except tf.errors.InvalidArgumentError:
            return None
        return int(height), int(width)
    return None


def image_files(paths: list[str], labels: np.ndarray) -> tf.data.Dataset:
    """(path, label) elements."""
    return tf.data.Dataset.from_tensor_slices((paths, labels))


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG bytes (grey or colour) -> uint8 (height, width, 3) at the image's own size."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def resize(batch: tf.Tensor, size: int) -> tf.Tensor:
    """(b, h, w, c) -> float32 (b, size, size, c), bilinear; anti-aliased only when shrinking,
    the only case where it changes anything (its kernel costs four times the plain one)."""
    batch = tf.cast(batch, tf.float32)
    shrinking = tf.logical_or(tf.shape(batch)[1] > size, tf.shape(batch)[2] > size)
    return tf.cond(
        shrinking,
        lambda: tf.image.resize(batch, (size, size), antialias=True),
        lambda: tf.image.resize(batch, (size, size)),
    )


def decode_resize(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """PNG/JPEG bytes (any size, grey or colour) -> float32 (size, size, 3) in 0..255."""
    return resize(decode(encoded)[None], size)[0]


def shared_shape(paths: list[str]) -> tuple[int, int] | None:
    """(height, width) every image file has, read from their headers; None if they differ."""
    shapes = set()
    for path in paths:
        with Image.open(path) as image:  # reads the header only
            shapes.add((image.height, image.width))
        if len(shapes) > 1:
            return None
    return shapes.pop() if shapes else None


def decoded_images(
    files: tf.data.Dataset, size: int | None = None, shape: tuple[int, int] | None = None
) -> tf.data.Dataset:
    """(path, label) elements -> (image, label), decoded in parallel, in order: float32
    (size, size, 3) in 0..255, or without `size` uint8 at each image's own size, which is
    `shape` (height, width) if given (shared_shape: checked, and known to the pipeline)."""

    def read(path, label):
        encoded = tf.io.read_file(path)
        if size is not None:
            return decode_resize(encoded, size), label
        image = decode(encoded)
        return (image if shape is None else tf.ensure_shape(image, (*shape, 3))), label

    return files.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def preview_sample(labels: np.ndarray, classes: int, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` images of each of `classes` seeded classes, grouped by class."""
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    chosen = rng.choice(present, min(classes, len(present)), replace=False)
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in sorted(chosen)]
    )


def read_pixels(path: Path | str, size: int) -> np.ndarray:
    """One image file as RGB uint8 (size, size, 3), for a preview."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
