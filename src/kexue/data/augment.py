"""Image augmentation on the fly, as a seeded tf.data pipeline: the post's horizontal flip,
rotation, zoom, same-class splice and random quarter mask.

Every random choice comes from stateless ops seeded per batch from `seed`, so one seed gives
the same augmented images whatever the parallelism, and each epoch draws new ones.

    each image: brought to the working size -> each batch: flip, rotation and zoom (one
    resampling) -> resize to the training size -> quarter mask -> splice, an image's right
    half replaced by the right half of another image of the same class in the batch (the
    label stays right by construction)

The working size is the images' own when the dataset says they all share one no larger than
the training size (MNIST's 28-pixel digits turn before they are enlarged to 96, at a twelfth
of the pixels); otherwise each image is first resized to the training size. The augmentations
run once per batch, not per image: a tf.data function pays a fixed cost for every op it runs,
which per image outweighed the resampling itself (bench/images.py).
"""

from __future__ import annotations

import io as stdio
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from kexue.data.image_tensors import resize

PREVIEW_LABEL_WIDTH = 96  # pixels left of each preview row for its name


@dataclass(frozen=True)
class AugmentConfig:
    flip: float  # probability of a horizontal flip
    rotation: float  # degrees; each image turns by a uniform angle in [-rotation, rotation]
    zoom: list[float]  # [low, high] scale; above 1 magnifies, below 1 shrinks
    splice: float  # probability that an image takes the right half of a same-class image
    mask: float  # probability that one random quarter of an image is zeroed
    fill_mode: Literal["reflect", "nearest", "constant"]  # pixels rotated or zoomed in
    seed: int


# -- single augmentations on a batch (b, h, w, c), deterministic given their parameters ------


def flip_rotate_zoom(
    images: tf.Tensor,
    flips: tf.Tensor,
    degrees: tf.Tensor,
    scales: tf.Tensor,
    fill_mode: str = "reflect",
) -> tf.Tensor:
    """Mirror each image left-right where its `flips` says, then turn it counter-clockwise by
    its `degrees` and magnify it by its `scales` (all (b,)) about its center: one resampling,
    float32 out."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    center_x = (tf.cast(width, tf.float32) - 1) / 2
    center_y = (tf.cast(height, tf.float32) - 1) / 2
    angles = tf.cast(degrees, tf.float32) * math.pi / 180
    scales = tf.cast(scales, tf.float32)
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    a, b, c, d, e, f = sampling_affine(cos, sin, center_x, center_y)
    # A mirrored image's column x is the original's column w-1-x: negate x's row of the affine.
    sign = tf.where(flips, -1.0, 1.0)
    a, b, c = sign * a, sign * b, sign * c + (1 - sign) * center_x
    zeros = tf.zeros_like(cos)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=tf.stack([a, b, c, d, e, f, zeros, zeros], axis=1),
        output_shape=tf.stack([height, width]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )


def sampling_affine(cos, sin, center_x, center_y) -> list:
    """(a, b, c, d, e, f): output pixel (x, y) samples the input at (ax + by + c, dx + ey + f)
    = center + R(angle)^-1 (xy - center) / scale, given cos and sin of the angle over the
    scale. y points down, so a positive angle turns the picture counter-clockwise as seen."""
    return [
        cos,
        -sin,
        center_x - cos * center_x + sin * center_y,
        sin,
        cos,
        center_y - sin * center_x - cos * center_y,
    ]


def quarter_mask(images: tf.Tensor, quarters: tf.Tensor, chosen: tf.Tensor | None = None):
    """Zero one quarter of each image (of the `chosen` ones, (b,) bool, if given), by its
    `quarters` (b,): 0 top left, 1 top right, 2 bottom left, 3 bottom right."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows = tf.range(height)[None, :, None] < height // 2
    cols = tf.range(width)[None, None, :] < width // 2
    top, left = (quarters < 2)[:, None, None], (quarters % 2 == 0)[:, None, None]
    hidden = tf.equal(rows, top) & tf.equal(cols, left)
    if chosen is not None:
        hidden &= chosen[:, None, None]
    return images * tf.cast(~hidden, images.dtype)[..., None]


def splice(images: tf.Tensor, partners: tf.Tensor) -> tf.Tensor:
    """Each image's right half replaced by that of images[partners[i]]."""
    half = tf.shape(images)[2] // 2
    return tf.concat([images[:, :, :half], tf.gather(images[:, :, half:], partners)], axis=2)


def same_class_partners(labels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """For each image of the batch, a random other image of its class (itself if alone)."""
    size = tf.shape(labels)[0]
    same = tf.equal(labels[:, None], labels[None, :]) & ~tf.eye(size, dtype=tf.bool)
    draw = tf.random.stateless_uniform((size, size), seed, minval=0.5, maxval=1.0)
    scores = tf.where(same, draw, 0.0) + tf.eye(size) * 0.25  # self only when nothing else
    return tf.argmax(scores, axis=1, output_type=tf.int32)


# -- the random pipeline ---------------------------------------------------------------------


def random_strengths(size, seed: tf.Tensor, config: AugmentConfig) -> dict[str, tf.Tensor]:
    """Per image: flip?, degrees, scale, quarter, mask?, splice?, and the partners' seed."""
    keys = tf.unstack(tf.random.experimental.stateless_split(seed, 7))
    low, high = config.zoom

    def uniform(key, minval=0.0, maxval=1.0):
        return tf.random.stateless_uniform((size,), key, minval, maxval)

    return {
        "flip": uniform(keys[0]) < config.flip,
        "degrees": uniform(keys[1], -config.rotation, config.rotation),
        "scales": uniform(keys[2], low, high),
        "quarters": tf.random.stateless_uniform((size,), keys[3], 0, 4, dtype=tf.int32),
        "mask": uniform(keys[4]) < config.mask,
        "splice": uniform(keys[5]) < config.splice,
        "partner_seed": keys[6],
    }


def augment_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    draw: dict[str, tf.Tensor],
    size: int,
    config: AugmentConfig,
) -> tf.Tensor:
    """A batch (b, h, w, c) at its working size -> float32 (b, size, size, c): flip, rotation
    and zoom, resize, quarter mask, splice, as `draw` (random_strengths) says."""
    batch = tf.cast(images, tf.float32)
    if config.flip > 0 or config.rotation > 0 or tuple(config.zoom) != (1.0, 1.0):
        batch = flip_rotate_zoom(
            batch, draw["flip"], draw["degrees"], draw["scales"], config.fill_mode
        )
    if tuple(batch.shape[1:3]) != (size, size):
        batch = resize(batch, size)
    if config.mask > 0:
        batch = quarter_mask(batch, draw["quarters"], draw["mask"])
    if config.splice > 0:  # an image that is not spliced is its own partner: one gather
        partners = same_class_partners(labels, draw["partner_seed"])
        own = tf.range(tf.shape(labels)[0], dtype=partners.dtype)
        batch = splice(batch, tf.where(draw["splice"], partners, own))
    return batch


def at_working_size(dataset: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """(image, label) elements as they come when the dataset's static shape says every image
    is the same size, no larger than `size` (the rotation then resamples fewer pixels); else
    each image resized to (size, size)."""
    height, width = dataset.element_spec[0].shape[:2]
    if height is not None and width is not None and height <= size and width <= size:
        return dataset
    return dataset.map(
        lambda image, label: (resize(image[None], size)[0], label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def augmented_batches(
    dataset: tf.data.Dataset, config: AugmentConfig, size: int, batch_size: int, seed: int
) -> tf.data.Dataset:
    """(image, label) elements -> augmented (images float32 (b, size, size, c), labels)
    batches, on the fly."""
    # Stateless seeds, one pair per batch, new ones each epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def one_batch(batch, batch_seed):
        images, labels = batch
        draw = random_strengths(tf.shape(labels)[0], batch_seed, config)
        return augment_batch(images, labels, draw, size, config), labels

    batches = at_working_size(dataset, size).batch(batch_size)
    return tf.data.Dataset.zip(batches, seeds).map(one_batch, num_parallel_calls=tf.data.AUTOTUNE)


# -- preview -----------------------------------------------------------------------------------


def preview_rows(
    images: np.ndarray, labels: np.ndarray, config: AugmentConfig
) -> list[tuple[str, np.ndarray]]:
    """(name, images) rows for a person to look at: the originals, each augmentation alone
    (always applied, at random strength within its range), then the pipeline as configured."""
    seed = tf.constant([config.seed, 0], dtype=tf.int64)
    batch, classes = tf.constant(images, tf.float32), tf.constant(labels)
    draw = random_strengths(len(images), seed, config)
    every, none = tf.ones(len(images), tf.bool), tf.zeros(len(images), tf.bool)
    zeros, ones = tf.zeros(len(images)), tf.ones(len(images))

    def transformed(flips, degrees, scales):
        return flip_rotate_zoom(batch, flips, degrees, scales, config.fill_mode)

    rows = {
        "original": batch,
        "flip": transformed(every, zeros, ones),
        f"rotate +-{config.rotation:g} deg": transformed(none, draw["degrees"], ones),
        f"zoom {config.zoom[0]:g}-{config.zoom[1]:g}": transformed(none, zeros, draw["scales"]),
        "splice": splice(batch, same_class_partners(classes, draw["partner_seed"])),
        "mask": quarter_mask(batch, draw["quarters"]),
        "as trained": as_trained(images, labels, config),
    }
    return [(name, np.asarray(row)) for name, row in rows.items()]


def as_trained(images: np.ndarray, labels: np.ndarray, config: AugmentConfig) -> tf.Tensor:
    """The images as the training pipeline draws them (one batch, the first epoch)."""
    pairs = tf.data.Dataset.from_tensor_slices((images, labels))
    batches = augmented_batches(pairs, config, images.shape[1], len(images), config.seed + 1)
    return next(iter(batches))[0]


def preview_png(rows: list[tuple[str, np.ndarray]]) -> bytes:
    """A PNG grid: one row per (name, images), the name at its left."""
    height, width = rows[0][1].shape[1:3]
    columns = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (PREVIEW_LABEL_WIDTH + columns * width, len(rows) * height), "white")
    draw = ImageDraw.Draw(grid)
    for r, (name, images) in enumerate(rows):
        draw.text((4, r * height + height // 2 - 6), name, fill="black")
        for c, image in enumerate(images):
            pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
            grid.paste(Image.fromarray(pixels), (PREVIEW_LABEL_WIDTH + c * width, r * height))
    buffer = stdio.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()
