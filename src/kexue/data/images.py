"""Class-per-folder image datasets: write them and read them (decoding: data/image_tensors.py).

The layout every reader here produces and every model reads:

    ROOT/{train,validation,test}/<class>/<image>     (PNG or JPEG, any size)

Validation is a seeded part of each class's training images, never of the test images; an
image byte for byte equal to one on an earlier side (train, then validation) is dropped.

Sources of it: MNIST digits written out as PNG files (the offline stand-in), Stanford Dogs
(`Images/<wnid>-<breed>/*.jpg` with the official `train_list.mat` / `test_list.mat`),
Oxford-IIIT Pet (`images/<Breed>_<n>.jpg` with `annotations/{trainval,test}.txt`) and a
folder of one's own images (`read_image_folder`, which the capsule model reads too):

    FOLDER/<class>/<image>                                  split by seeded fractions, or
    FOLDER/train/<class>/<image> + FOLDER/test/<class>/<image>   validation out of train

in any format Pillow reads (JPEG, PNG, WebP, BMP, ...; grey, RGB, RGBA, palette); a file it
cannot read is named on stderr, skipped and counted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, TypeVar

import numpy as np
import scipy.io
from PIL import Image

from kexue import io, splits
from kexue.data.sources import Source, fetch, replace_folder
from kexue.errors import DataError, IncompatibleDataError, ParamsError

SPLITS = ("train", "validation", "test")
SOURCE_SPLITS = ("train", "test")  # the published ones; validation comes out of train
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COUNTS_FILE = "counts.json"  # beside the splits: their image counts, dropped and skipped files
FOLDER_LAYOUT = "<class>/<image> folders, or train/<class>/<image> and test/<class>/<image>"
# A split's images: (path relative to the images folder, class name), in a stable order.
Listing = list[tuple[str, str]]
T = TypeVar("T")


@dataclass(frozen=True)
class FolderSplitConfig:
    """How a class-per-folder tree of one's own images is split, each class on its own."""

    validation_fraction: float  # of each class's training images (seeded)
    test_fraction: float  # of each class's images, for a tree without train/ and test/
    min_per_class: int  # readable images a class folder must hold


@dataclass(frozen=True)
class ImageDataConfig:
    dataset: Literal["mnist", "stanford_dogs", "oxford_pet", "folder"]
    folder: str  # dataset folder: the class-per-folder tree (FOLDER_LAYOUT)
    folder_split: FolderSplitConfig  # dataset folder: its validation and test parts
    images_source: str | None  # key of `sources`: the archive of images (published datasets)
    lists_source: str | None  # key of `sources`: the official train/test lists (published)
    train_per_class: int | None  # a seeded sample of each class; None: all
    validation_per_class: int  # of each class's training images, held out (not for folder)
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
    resumable, extracted safely); a folder is read with `read_image_folder`. Returns the
    image count of each split, how many byte-identical held-out images were dropped and how
    many files were skipped as unreadable, also written to COUNTS_FILE beside the splits."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        skipped = 0
        if config.dataset == "mnist":
            if mnist is None:
                raise ParamsError("dogs.data.dataset: mnist needs the MNIST file (--mnist)")
            counts = _write_mnist(config, mnist, staged)
        elif config.dataset == "folder":
            counts, skipped = _write_folder(config, staged)
        else:
            counts = _move_published(config, sources, staged, cache_dir)
        dropped = drop_repeated_images(staged)
        kept = {s: counts[s] - dropped.get(f"{s}_overlap_dropped", 0) for s in SPLITS}
        summary = {**kept, **dropped, "skipped": skipped}
        io.write_json(staged / COUNTS_FILE, summary)
        replace_folder(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return summary


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


def _write_folder(config: ImageDataConfig, out: Path) -> tuple[dict[str, int], int]:
    """The folder's readable images into out/split/<class>/ (each written once to a pool,
    then moved); train and test capped by the per-class samples. (counts, skipped)."""
    root, pool = Path(config.folder), out / ".pool"

    def pooled(path: Path, image: Image.Image) -> str:
        return str(write_rgb(path, image, pool / path.relative_to(root)).relative_to(pool))

    listings, skipped = read_image_folder(
        root, config.folder_split, config.seed, pooled, "dogs.data"
    )
    listings["train"] = per_class_sample(listings["train"], config.train_per_class, config.seed)
    listings["test"] = per_class_sample(listings["test"], config.test_per_class, config.seed)
    counts = {split: move_split(pool, listings[split], out, split) for split in SPLITS}
    shutil.rmtree(pool)
    return counts, skipped


# -- one's own folder of images --------------------------------------------------------------


def read_image_folder(
    root: Path,
    config: FolderSplitConfig,
    seed: int,
    convert: Callable[[Path, Image.Image], T],
    key: str,
) -> tuple[dict[str, list[tuple[T, str]]], int]:
    """({split: [(convert(path, decoded image), class name), ...]}, files skipped) of a tree
    in FOLDER_LAYOUT (`key`: the params block naming it, for errors). Each class is split on
    its own, by a seeded shuffle (kexue.splits), in file-name order within a split. A file
    Pillow cannot read (not an image, truncated) is named on stderr and skipped; a class
    folder with fewer readable images than its splits need is an error."""
    for name in ("validation_fraction", "test_fraction"):
        if not 0 < getattr(config, name) < 1:
            raise ParamsError(f"params.yaml: {key}.folder_split.{name}: expected 0 < x < 1")
    if config.validation_fraction + config.test_fraction >= 1:
        raise ParamsError(
            f"params.yaml: {key}.folder_split: expected validation_fraction + test_fraction < 1"
        )
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected {FOLDER_LAYOUT} ({key}.folder)")
    skipped: list[Path] = []
    listings: dict[str, list[tuple[T, str]]] = {split: [] for split in SPLITS}
    if not (root / "train").is_dir():  # one <class>/ level: all three splits out of it
        held = splits.SplitConfig(config.validation_fraction, config.test_fraction, seed)
        _split_classes(root, held, config.min_per_class, convert, listings, skipped, key)
        return listings, len(skipped)
    unexpected = sorted(set(_subfolders(root, skipped)) - set(SOURCE_SPLITS))
    if unexpected:
        raise DataError(
            f"{root / unexpected[0]}: a folder beside train/; expected train/<class>/ and "
            "test/<class>/ only (validation comes out of train)"
        )
    if not (root / "test").is_dir():
        raise DataError(
            f"{root / 'test'}: not found; expected test/<class>/ beside train/<class>/ "
            "(or <class>/ folders only)"
        )
    held = splits.SplitConfig(config.validation_fraction, 0.0, seed)
    classes = _split_classes(
        root / "train", held, config.min_per_class, convert, listings, skipped, key
    )
    for name, folder in _class_folders(root / "test", skipped).items():
        if name not in classes:
            raise DataError(f"{folder}: class not in {root / 'train'}; expected the same classes")
        items = _read_class(folder, convert, skipped)
        if not items:
            raise DataError(f"{folder}: 0 readable images; expected at least 1 test image")
        listings["test"] += [(item, name) for item in items]
    return listings, len(skipped)


def _split_classes(
    folder: Path,
    held: splits.SplitConfig,
    min_per_class: int,
    convert: Callable[[Path, Image.Image], T],
    listings: dict[str, list[tuple[T, str]]],
    skipped: list[Path],
    key: str,
) -> list[str]:
    """Each class folder of `folder` read and split by `held` into `listings`; its classes."""
    classes = _class_folders(folder, skipped)
    needed = max(min_per_class, splits.fewest_groups(held))
    for name, class_folder in classes.items():
        items = _read_class(class_folder, convert, skipped)
        if len(items) < needed:
            parts = "train + validation + test" if held.test_fraction else "train + validation"
            raise DataError(
                f"{class_folder}: {len(items)} readable images; expected at least {needed} "
                f"for {parts} ({key}.folder_split)"
            )
        sides = splits.split_groups(range(len(items)), int, held, str(class_folder))
        for split, indices in sides.items():
            listings[split] += [(items[i], name) for i in sorted(indices)]
    return list(classes)


def _visible(folder: Path) -> list[Path]:
    """The folder's entries by name, without hidden ones (.DS_Store, .gitignore)."""
    return [path for path in sorted(folder.iterdir()) if not path.name.startswith(".")]


def _subfolders(folder: Path, skipped: list[Path]) -> dict[str, Path]:
    """{name: path} of the folders in `folder`; a file beside them is skipped."""
    folders = {}
    for path in _visible(folder):
        if path.is_dir():
            folders[path.name] = path
        else:
            _skip(path, "not in a class folder", skipped)
    return folders


def _class_folders(folder: Path, skipped: list[Path]) -> dict[str, Path]:
    """{class name: its folder} of `folder`, two at least."""
    classes = _subfolders(folder, skipped)
    if len(classes) < 2:
        raise DataError(
            f"{folder}: {len(classes)} class folder(s); expected at least 2, one per class "
            "(<class>/<image>)"
        )
    return classes


def _read_class(
    folder: Path, convert: Callable[[Path, Image.Image], T], skipped: list[Path]
) -> list[T]:
    """convert(path, image) of each readable image of a class folder, in file-name order."""
    entries = _visible(folder)
    if not entries:
        raise DataError(f"{folder}: empty class folder; expected images of that class")
    items = []
    for path in entries:
        image = _decoded(path, skipped)
        if image is not None:
            items.append(convert(path, image))
    return items


def _decoded(path: Path, skipped: list[Path]) -> Image.Image | None:
    """The file's image, decoded whole (a truncated file fails here), or None: skipped."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except Image.UnidentifiedImageError:
        _skip(path, "not an image Pillow reads", skipped)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        _skip(path, f"unreadable ({' '.join(str(err).split()) or type(err).__name__})", skipped)
    return None


def _skip(path: Path, reason: str, skipped: list[Path]) -> None:
    print(f"skipped {path}: {reason}", file=sys.stderr)
    skipped.append(path)


# Formats the model's decoders read as they are, and their file suffixes: such a file in
# grey or RGB is copied byte for byte; any other image is written as an RGB PNG.
AS_IS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}


def write_rgb(source: Path, image: Image.Image, target: Path) -> Path:
    """The decoded image of file `source` at `target` (a suffix added if its own does not
    fit) in a form `decode` reads as RGB: the file itself if it is a grey or RGB JPEG/PNG,
    else the image converted to RGB (alpha dropped) as PNG. Returns the path written."""
    as_is = AS_IS.get(image.format) if image.mode in ("L", "RGB") else None
    suffixes = as_is or AS_IS["PNG"]
    if target.suffix.lower() not in suffixes:
        target = target.with_name(target.name + suffixes[0])
    if target.exists():
        raise DataError(f"{source}: written as {target.name}, another image's name; rename one")
    target.parent.mkdir(parents=True, exist_ok=True)
    if as_is:
        shutil.copyfile(source, target)
    else:
        image.convert("RGB").save(target, format="PNG")
    return target


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


def shared_shape(paths: list[str]) -> tuple[int, int] | None:
    """(height, width) every image file has, read from their headers; None if they differ."""
    shapes = set()
    for path in paths:
        with Image.open(path) as image:  # reads the header only
            shapes.add((image.height, image.width))
        if len(shapes) > 1:
            return None
    return shapes.pop() if shapes else None


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
