"""Image augmentations on tiny images: each one's geometric effect, the seeded pipeline, the
preview grid."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kexue.data import augment, image_tensors
from kexue.data.augment import AugmentConfig

OFF = AugmentConfig(
    flip=0.0, rotation=0.0, zoom=[1.0, 1.0], splice=0.0, mask=0.0, fill_mode="constant", seed=1
)


def ramp(height: int = 6, width: int = 6, channels: int = 3) -> np.ndarray:
    """Every pixel a different value, so any move shows."""
    return np.arange(height * width * channels, dtype=np.float32).reshape(height, width, channels)


def rotate_zoom(images, degrees, scales, fill_mode="constant"):
    """flip_rotate_zoom with no flip."""
    return augment.flip_rotate_zoom(
        tf.constant(images), tf.zeros(len(images), tf.bool), degrees, scales, fill_mode
    )


def test_flip_mirrors_left_and_right_and_only_the_images_drawn_for_it():
    images = np.stack([ramp(4, 5), ramp(4, 5) + 1])
    flipped = augment.flip_rotate_zoom(
        tf.constant(images), tf.constant([True, False]), [0.0, 0.0], [1.0, 1.0]
    ).numpy()
    np.testing.assert_allclose(flipped[0], images[0, :, ::-1], atol=1e-4)
    np.testing.assert_allclose(flipped[1], images[1], atol=1e-4)


def test_flip_comes_before_the_rotation():
    image = ramp(5, 5, 1)
    both = augment.flip_rotate_zoom(tf.constant(image[None]), [True], [90.0], [1.0], "constant")
    np.testing.assert_allclose(both[0], np.rot90(image[:, ::-1], k=1, axes=(0, 1)), atol=1e-4)


def test_each_image_of_a_batch_gets_its_own_strength():
    images = np.stack([ramp(5, 5, 1)] * 2)
    turned = rotate_zoom(images, [90.0, 0.0], [1.0, 1.0])
    np.testing.assert_allclose(turned[1], images[1], atol=1e-4)
    assert not np.allclose(turned[0], images[0])
    masked = augment.quarter_mask(tf.constant(np.ones((2, 4, 4, 1))), tf.constant([0, 3])).numpy()
    assert masked[0, 0, 0, 0] == 0 and masked[0, 3, 3, 0] == 1 and masked[1, 3, 3, 0] == 0


def test_mask_spares_the_images_not_chosen():
    ones = tf.constant(np.ones((2, 4, 4, 1)))
    masked = augment.quarter_mask(ones, tf.constant([0, 0]), tf.constant([False, True])).numpy()
    assert masked[0].min() == 1 and masked[1, 0, 0, 0] == 0


def test_rotation_by_90_degrees_turns_counter_clockwise():
    image = ramp(5, 5, 1)
    turned = rotate_zoom(image[None], [90.0], [1.0]).numpy()
    np.testing.assert_allclose(turned[0], np.rot90(image, k=1, axes=(0, 1)), atol=1e-4)


def test_small_rotation_keeps_the_center_and_moves_the_corners():
    image = ramp(7, 7, 1)
    turned = rotate_zoom(image[None], [10.0], [1.0]).numpy()[0]
    assert turned[3, 3, 0] == pytest.approx(image[3, 3, 0], abs=1e-4)
    assert not np.allclose(turned[0, 0], image[0, 0])


def test_zoom_2_magnifies_the_middle_half():
    image = ramp(8, 8, 1)
    zoomed = rotate_zoom(image[None], [0.0], [2.0]).numpy()[0, ..., 0]
    # Output pixel (y, x) samples the input at 3.5 + (y - 3.5) / 2: the middle 4 x 4 spread out.
    coords = 3.5 + (np.arange(8) - 3.5) / 2
    expected = coords[:, None] * 8 + coords[None, :]  # the ramp is linear: bilinear is exact
    np.testing.assert_allclose(zoomed, expected, atol=1e-4)


def test_zoom_below_1_shrinks_and_fills_the_border():
    image = np.ones((8, 8, 1), np.float32)
    shrunk = rotate_zoom(image[None], [0.0], [0.5]).numpy()[0, ..., 0]
    assert shrunk[0, 0] == 0 and shrunk[4, 4] == 1


@pytest.mark.parametrize("quarter", [0, 1, 2, 3])
def test_mask_zeroes_exactly_one_quarter(quarter):
    image = np.ones((6, 8, 3), np.float32)
    masked = augment.quarter_mask(tf.constant(image[None]), tf.constant([quarter])).numpy()[0]
    zero = masked == 0
    assert zero.sum() == image.size // 4
    rows = slice(0, 3) if quarter < 2 else slice(3, 6)
    cols = slice(0, 4) if quarter % 2 == 0 else slice(4, 8)
    assert zero[rows, cols].all()


def test_splice_takes_the_right_half_of_a_same_class_image_and_keeps_the_label():
    images = np.stack([np.full((6, 6, 3), value, np.float32) for value in (10, 20, 30, 40)])
    labels = tf.constant([0, 1, 0, 1])
    partners = augment.same_class_partners(labels, tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(partners, [2, 3, 0, 1])  # the only same-class other image
    spliced = augment.splice(tf.constant(images), partners).numpy()
    for i, partner in enumerate(partners):
        np.testing.assert_array_equal(spliced[i, :, :3], images[i, :, :3])
        np.testing.assert_array_equal(spliced[i, :, 3:], images[partner, :, 3:])
    config = AugmentConfig(**{**OFF.__dict__, "splice": 1.0})
    out = augment.augmented_batches(
        tf.data.Dataset.from_tensor_slices((images, labels)), config, 6, batch_size=4, seed=3
    )
    (batch, batch_labels), *_ = list(out)
    np.testing.assert_array_equal(batch_labels, labels)
    assert set(np.unique(batch[0, :, 3:])) == {30.0}  # right half from the other class-0 image


def test_a_lone_image_of_its_class_is_spliced_with_itself():
    partners = augment.same_class_partners(tf.constant([0, 1, 2]), tf.constant([1, 1], tf.int64))
    np.testing.assert_array_equal(partners, [0, 1, 2])


def test_the_pipeline_is_seeded_and_draws_anew_each_epoch():
    config = AugmentConfig(
        flip=0.5, rotation=10.0, zoom=[0.8, 1.2], splice=0.5, mask=0.5, fill_mode="reflect", seed=1
    )
    images = np.stack([ramp(8, 8) + i for i in range(6)])
    labels = np.array([0, 0, 1, 1, 2, 2])

    def batches(seed):
        data = tf.data.Dataset.from_tensor_slices((images, labels))
        return augment.augmented_batches(data, config, 8, batch_size=3, seed=seed)

    first = [x.numpy() for x, _ in batches(5)]
    again = [x.numpy() for x, _ in batches(5)]
    dataset = batches(5)
    epoch1, epoch2 = ([x.numpy() for x, _ in dataset] for _ in range(2))
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.allclose(np.concatenate(epoch1), np.concatenate(epoch2))
    assert not np.allclose(np.concatenate(first), images)


def turned_by(degrees: float) -> dict:
    """A draw of random_strengths for one image: this rotation, nothing else."""
    no = tf.constant([False])
    return {"flip": no, "degrees": tf.constant([degrees]), "scales": tf.constant([1.0])}


def test_a_batch_turns_at_its_working_size_then_is_resized():
    config = AugmentConfig(**{**OFF.__dict__, "rotation": 90.0})
    image = ramp(4, 4)
    turned = augment.augment_batch(tf.constant(image[None]), [0], turned_by(90.0), 8, config)
    resized = image_tensors.resize(tf.constant(image[None]), 8).numpy()[0]
    np.testing.assert_allclose(turned[0], np.rot90(resized, k=1, axes=(0, 1)), atol=1e-3)


@pytest.mark.parametrize(
    "shape, working",
    [
        ((4, 4), (4, 4)),
        ((8, 6), (8, 6)),
        ((16, 16), (8, 8)),
        ((4, 12), (8, 8)),
        ((None, None), (8, 8)),
    ],
)
def test_images_work_at_their_shared_size_unless_larger_or_unknown(shape, working):
    data = tf.data.Dataset.from_generator(
        lambda: iter([]),
        output_signature=(tf.TensorSpec((*shape, 3), tf.uint8), tf.TensorSpec((), tf.int32)),
    )
    assert tuple(augment.at_working_size(data, 8).element_spec[0].shape[:2]) == working


def test_resizing_is_anti_aliased_only_when_shrinking_where_it_differs():
    small, large = ramp(5, 7)[None] % 50, ramp(24, 24)[None] % 50
    for batch in (small, large):
        np.testing.assert_allclose(
            image_tensors.resize(tf.constant(batch), 12),
            tf.image.resize(batch, (12, 12), antialias=True),
            atol=1e-3,
        )
    assert not np.allclose(
        tf.image.resize(large, (12, 12)), image_tensors.resize(large, 12), atol=1
    )


def test_images_of_any_size_come_out_as_one_batch_of_the_training_size():
    config = AugmentConfig(
        flip=0.5, rotation=10.0, zoom=[0.8, 1.2], splice=0.5, mask=0.5, fill_mode="reflect", seed=1
    )
    originals = [ramp(5, 9).astype(np.uint8), ramp(30, 20).astype(np.uint8), ramp(8, 8)]
    data = tf.data.Dataset.from_generator(
        lambda: ((image.astype(np.uint8), 0) for image in originals),
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.uint8),
            tf.TensorSpec((), tf.int32),
        ),
    )
    (batch, labels), *rest = list(augment.augmented_batches(data, config, 12, 3, seed=2))
    assert batch.shape == (3, 12, 12, 3) and batch.dtype == tf.float32 and not rest
    np.testing.assert_array_equal(labels, [0, 0, 0])


def test_preview_has_a_row_per_augmentation():
    images = np.stack([ramp(8, 8) for _ in range(4)]) % 255
    rows = augment.preview_rows(images, np.array([0, 0, 1, 1]), OFF)
    names = [name for name, _ in rows]
    assert names[0] == "original" and names[-1] == "as trained" and "splice" in names
    grid = Image.open(io.BytesIO(augment.preview_png(rows)))
    assert grid.size == (augment.PREVIEW_LABEL_WIDTH + 4 * 8, len(rows) * 8)
