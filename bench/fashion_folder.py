"""A folder of real photos-like images to try the own-folder route of dogs (or capsule) with:
Fashion-MNIST (Debian's `dataset-fashion-mnist`) written as JPEG files of mixed sizes,
`train/<class>/` from its training set and `test/<class>/` from its test set, with a few
files cut short or empty, as a folder gathered by hand has.

    apt-get install dataset-fashion-mnist
    python bench/fashion_folder.py data/images/fashion --train-per-class 200 --test-per-class 50
    dvc add data/images/fashion
    dvc exp run -S dogs.data.dataset=folder -S dogs.data.folder=data/images/fashion
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): a big-endian header of dimensions, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_split(
    out: Path, images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> list[Path]:
    written = []
    for label, name in enumerate(CLASSES):
        chosen = rng.permutation(np.flatnonzero(labels == label))[:per_class]
        (out / name).mkdir(parents=True, exist_ok=True)
        for index in chosen:
            side = int(rng.integers(28, 97))
            image = Image.fromarray(images[index]).resize((side, side), Image.BILINEAR)
            if rng.random() < 0.5:
                image = image.convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
            path = out / name / f"{index:05d}.jpg"
            path.write_bytes(buffer.getvalue())
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--corrupt", type=int, default=4, help="files cut short or emptied")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    written = []
    for split, prefix, per_class in [
        ("train", "train", args.train_per_class),
        ("test", "t10k", args.test_per_class),
    ]:
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        written += write_split(args.out / split, images, labels, per_class, rng)
    for number, path in enumerate(rng.choice(written, size=args.corrupt, replace=False)):
        data = path.read_bytes()
        path.write_bytes(b"" if number == 0 else data[: len(data) // 2])
        print(f"corrupted {path}")
    print(f"{args.out}: {len(written)} images, {args.corrupt} of them corrupted")


if __name__ == "__main__":
    main()
