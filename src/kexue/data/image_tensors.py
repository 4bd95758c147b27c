"""Image files as tensors: decoded, resized and fed in parallel by tf.data.

Apart from data/images.py so that writing and reading image folders (the fetch_images and
prepare stages) needs no TensorFlow.
"""

from __future__ import annotations

import struct

import numpy as np
import tensorflow as tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
