"""Images per second of the training input pipeline (decode + resize + augment + batch):
the tf.data pipeline of data/augment.py vs a plain Python generator doing the same work
image by image with PIL and NumPy (the post's approach, a Keras `fit_generator` feed).

    python bench/images.py                  # after `dvc repro fetch_images`
    python bench/images.py --images 1000 --repeats 3 --data data/images/dogs
    python bench/images.py --photo 500x375  # the same images as photo-sized JPEG files

Both read the same files with the `dogs` params (image size, augmentations, batch size).
MNIST's 28-pixel PNG files cost next to nothing to decode; `--photo` re-encodes them at a
dog photo's size (Stanford Dogs' are about 500 x 375) so that decoding weighs as it would.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kexue import params  # noqa: E402
from kexue.data import augment, image_tensors, images  # noqa: E402
from kexue.data.augment import AugmentConfig  # noqa: E402
from kexue.models import dogs  # noqa: E402


def python_batches(
    paths: list[str], labels: np.ndarray, size: int, config: AugmentConfig, batch: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The baseline: one image at a time in Python, then the batch-level splice."""
    rng = np.random.default_rng(seed)
    for start in range(0, len(paths), batch):
        pixels = [augment_one(path, size, config, rng) for path in paths[start : start + batch]]
        x, y = np.stack(pixels), labels[start : start + batch]
        spliced = x.copy()
        for i in range(len(y)):
            others = np.flatnonzero((y == y[i]) & (np.arange(len(y)) != i))
            if len(others) and rng.random() < config.splice:
                spliced[i, :, size // 2 :] = x[rng.choice(others), :, size // 2 :]
        yield spliced, y


def augment_one(path: str, size: int, config: AugmentConfig, rng) -> np.ndarray:
    with Image.open(path) as opened:
        image = opened.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < config.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = math.radians(rng.uniform(-config.rotation, config.rotation))
    scale = rng.uniform(*config.zoom)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    center = (size - 1) / 2
    affine = augment.sampling_affine(cos, sin, center, center)  # PIL's AFFINE: the same form
    image = image.transform((size, size), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    if rng.random() < config.mask:
        quarter = rng.integers(4)
        rows = slice(0, size // 2) if quarter < 2 else slice(size // 2, size)
        cols = slice(0, size // 2) if quarter % 2 == 0 else slice(size // 2, size)
        pixels = pixels.copy()
        pixels[rows, cols] = 0
    return pixels


def tf_batches(paths, labels, size: int, config: AugmentConfig, batch: int, seed: int):
    """The pipeline training uses (without its in-memory cache: every epoch decodes)."""
    files = image_tensors.image_files(paths, labels)
    decoded = image_tensors.decoded_images(files, shape=images.shared_shape(paths))
    return augment.augmented_batches(decoded, config, size, batch, seed).prefetch(-1)


def images_per_second(run: Callable[[], Iterable], count: int, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        seen = sum(len(y) for _, y in run())
        timings.append(time.perf_counter() - start)
        assert seen == count, (seen, count)
    return count / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/images/dogs"))
    parser.add_argument("--images", type=int, default=2000, help="training images per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photo", help="WIDTHxHEIGHT: re-encode the images as JPEG this size")
    args = parser.parse_args()
    config = params.parse(dogs.Config, params.block(params.load(), "dogs"), "dogs")
    paths, labels, _ = images.list_split(args.data, "train")
    order = np.random.default_rng(0).permutation(len(paths))[: args.images]
    paths, labels = [paths[i] for i in order], labels[order]
    with tempfile.TemporaryDirectory(prefix="kexue-bench-") as folder:
        if args.photo:
            width, height = (int(side) for side in args.photo.split("x"))
            paths = as_photos(paths, Path(folder), (width, height))
        measure(paths, labels, config, args.repeats, args.photo or "as stored")


def as_photos(paths: list[str], folder: Path, size: tuple[int, int]) -> list[str]:
    """The images upscaled to `size` and saved as JPEG files in `folder`."""
    photos = []
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            photo = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        photos.append(str(folder / f"{index:05d}.jpg"))
        photo.save(photos[-1], quality=90)
    return photos


def measure(paths: list[str], labels: np.ndarray, config, repeats: int, files: str) -> None:
    size, batch, seed = config.model.image_size, config.train.batch_size, config.augment.seed
    pipeline = tf_batches(paths, labels, size, config.augment, batch, seed)
    next(iter(pipeline))  # trace the graph once, outside the timing
    rates = {
        "tf.data": images_per_second(lambda: pipeline, len(paths), repeats),
        "python generator": images_per_second(
            lambda: python_batches(paths, labels, size, config.augment, batch, seed),
            len(paths),
            repeats,
        ),
    }
    print(f"{len(paths)} images ({files}) -> {size} px, batch {batch}, {os.cpu_count()} CPUs")
    for name, rate in rates.items():
        print(f"{name:>17}: {rate:8.0f} images/s")
    print(f"{'ratio':>17}: {rates['tf.data'] / rates['python generator']:8.2f}x")


if __name__ == "__main__":
    main()
