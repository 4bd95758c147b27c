"""Image augmentation on the fly, as a seeded tf.data pipeline: the post's horizontal flip,
rotation, zoom, same-class splice and random quarter mask.

Every random choice comes from stateless ops seeded per element from `seed`, so one seed gives
the same augmented images whatever the parallelism, and each epoch draws new ones.

    flip -> rotation and zoom (one resampling) -> quarter mask -> splice: an image's right
    half replaced by the right half of another image of the same class in the batch (the
    label stays right by construction)

Each step works on a whole batch at once, with a random draw per image: one op per batch
instead of one per image is what makes tf.data fast here (bench/images.py).
"""

from __future__ import annotations

import io as stdio
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

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


def flip(images: tf.Tensor) -> tf.Tensor:
    """Mirror left-right: column j becomes column w-1-j."""
    return tf.reverse(images, axis=[2])


def rotate_zoom(
    images: tf.Tensor, degrees: tf.Tensor, scales: tf.Tensor, fill_mode: str = "reflect"
) -> tf.Tensor:
    """Turn each image counter-clockwise by its `degrees` and magnify it by its `scales`
    (both (b,)) about its center, in one resampling."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    center_x = (tf.cast(width, tf.float32) - 1) / 2
    center_y = (tf.cast(height, tf.float32) - 1) / 2
    angles = tf.cast(degrees, tf.float32) * math.pi / 180
    scales = tf.cast(scales, tf.float32)
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([*sampling_affine(cos, sin, center_x, center_y), zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
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


def quarter_mask(images: tf.Tensor, quarters: tf.Tensor) -> tf.Tensor:
    """Zero one quarter of each image, by its `quarters` (b,): 0 top left, 1 top right,
    2 bottom left, 3 bottom right."""
    return _masked(images, quarters, tf.ones_like(quarters, dtype=tf.bool))


def _masked(images: tf.Tensor, quarters: tf.Tensor, chosen: tf.Tensor) -> tf.Tensor:
    """quarter_mask on the `chosen` images only, as one multiplication."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows = tf.range(height)[None, :, None] < height // 2
    cols = tf.range(width)[None, None, :] < width // 2
    top, left = (quarters < 2)[:, None, None], (quarters % 2 == 0)[:, None, None]
    hidden = tf.equal(rows, top) & tf.equal(cols, left) & chosen[:, None, None]
    return images * tf.cast(~hidden, images.dtype)[..., None]


def splice(images: tf.Tensor, partners: tf.Tensor) -> tf.Tensor:
    """Each image's right half replaced by that of images[partners[i]]."""
    width = tf.shape(images)[2]
    right = tf.range(width) >= width // 2
    return tf.where(right[None, None, :, None], tf.gather(images, partners), images)


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
    images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, config: AugmentConfig
) -> tf.Tensor:
    """Every augmentation of `config` on a float batch, each image drawn from `seed`."""
    draw = random_strengths(tf.shape(labels)[0], seed, config)

    images = tf.cast(images, tf.float32)
    if config.flip > 0:
        images = tf.where(draw["flip"][:, None, None, None], flip(images), images)
    if config.rotation > 0 or tuple(config.zoom) != (1.0, 1.0):
        images = rotate_zoom(images, draw["degrees"], draw["scales"], config.fill_mode)
    if config.mask > 0:
        images = _masked(images, draw["quarters"], draw["mask"])
    if config.splice > 0:
        # An image that is not spliced is its own partner: one gather and select for all.
        partners = same_class_partners(labels, draw["partner_seed"])
        own = tf.range(tf.shape(labels)[0], dtype=partners.dtype)
        images = splice(images, tf.where(draw["splice"], partners, own))
    return images


def augmented_batches(
    dataset: tf.data.Dataset, config: AugmentConfig, batch_size: int, seed: int
) -> tf.data.Dataset:
    """(image, label) elements -> augmented (images, labels) batches, on the fly."""
    # Stateless seeds, one pair per batch, new ones each epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def one_batch(pair, batch_seed):
        images, labels = pair
        return augment_batch(images, labels, batch_seed, config), labels

    return tf.data.Dataset.zip(dataset.batch(batch_size), seeds).map(
        one_batch, num_parallel_calls=tf.data.AUTOTUNE
    )


# -- preview -----------------------------------------------------------------------------------


def preview_rows(
    images: np.ndarray, labels: np.ndarray, config: AugmentConfig
) -> list[tuple[str, np.ndarray]]:
    """(name, images) rows for a person to look at: the originals, each augmentation alone
    (always applied, at random strength within its range), then the pipeline as configured."""
    seed = tf.constant([config.seed, 0], dtype=tf.int64)
    batch, classes = tf.constant(images, tf.float32), tf.constant(labels)
    draw = random_strengths(len(images), seed, config)
    rows = {
        "original": batch,
        "flip": flip(batch),
        f"rotate +-{config.rotation:g} deg": rotate_zoom(
            batch, draw["degrees"], tf.ones(len(images)), config.fill_mode
        ),
        f"zoom {config.zoom[0]:g}-{config.zoom[1]:g}": rotate_zoom(
            batch, tf.zeros(len(images)), draw["scales"], config.fill_mode
        ),
        "splice": splice(batch, same_class_partners(classes, draw["partner_seed"])),
        "mask": quarter_mask(batch, draw["quarters"]),
        "as trained": augment_batch(batch, classes, seed + 1, config),
    }
    return [(name, np.asarray(row)) for name, row in rows.items()]


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
