"""Class-per-folder image datasets: MNIST written out as PNG files, and the Stanford Dogs path
(download from a local HTTP server, hash, official lists, unsafe or truncated archives); the
validation part out of training, and no held-out image byte for byte equal to a seen one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from file_server import sha256, tar_archive
from PIL import Image

from kexue.data import images
from kexue.data.images import ImageDataConfig
from kexue.data.sources import Source
from kexue.errors import DataError, IncompatibleDataError, SourceError

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def jpeg(seed: int, size=(23, 17)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def mat_list(names: list[str]) -> bytes:
    """A MATLAB file shaped like Stanford Dogs' lists: `file_list`, a column of cells."""
    cells = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        cells[i, 0] = np.array([name])
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"file_list": cells, "labels": np.arange(len(names))[:, None]})
    return buffer.getvalue()


def stanford_dogs(per_breed: int = 4, test_per_breed: int = 2) -> tuple[bytes, bytes, dict]:
    """(images.tar, lists.tar, {split: names}) in Stanford Dogs' layout."""
    names = {"train": [], "test": []}
    members = {}
    for b, breed in enumerate(BREEDS):
        wnid = breed.split("-")[0]
        for i in range(per_breed + test_per_breed):
            name = f"{breed}/{wnid}_{i}.jpg"
            members[f"Images/{name}"] = jpeg(b * 100 + i)
            names["train" if i < per_breed else "test"].append(name)
    lists = tar_archive({f"{s}_list.mat": mat_list(n) for s, n in names.items()})
    return tar_archive(members), lists, names


def stanford_config(**overrides) -> ImageDataConfig:
    values = {
        "dataset": "stanford_dogs",
        "images_source": "stanford_dogs_images",
        "lists_source": "stanford_dogs_lists",
        "train_per_class": None,
        "validation_per_class": 1,
        "test_per_class": None,
        "seed": 1,
    }
    return ImageDataConfig(**{**values, **overrides})


def served_sources(server, images_tar: bytes, lists_tar: bytes, **hashes) -> dict[str, Source]:
    blocks = {
        "stanford_dogs_images": ("images.tar", images_tar),
        "stanford_dogs_lists": ("lists.tar", lists_tar),
    }
    return {
        key: Source.from_params(
            key,
            {
                "uri": server.put(f"{key}-{name}", data),
                "archive": f"{key}.tar",
                "sha256": hashes.get(key, sha256(data)),
            },
        )
        for key, (name, data) in blocks.items()
    }


def test_stanford_dogs_download_builds_the_official_split_in_class_folders(server, tmp_path):
    images_tar, lists_tar, names = stanford_dogs()
    out = tmp_path / "dogs"
    sources = served_sources(server, images_tar, lists_tar)
    counts = images.build_dataset(stanford_config(), out, tmp_path / "cache", sources)
    assert counts == {
        "train": 9,
        "validation": 3,
        "test": 6,
        "validation_overlap_dropped": 0,
        "test_overlap_dropped": 0,
    }
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "validation"]
    paths, labels, classes = images.list_split(out, "train")
    assert classes == BREEDS and np.bincount(labels).tolist() == [3, 3, 3]
    held, held_labels, _ = images.list_split(out, "validation", classes)
    assert np.bincount(held_labels).tolist() == [1, 1, 1]
    relative = lambda found: {p.split("/")[-2] + "/" + p.split("/")[-1] for p in found}  # noqa: E731
    assert relative(paths) | relative(held) == set(names["train"])
    test_paths, _, _ = images.list_split(out, "test", classes)
    assert relative(test_paths) == set(names["test"])
    first = next(out.glob(f"*/{BREEDS[0]}/n02085620_0.jpg"))
    assert first.read_bytes() == jpeg(0)


def test_per_class_sample_is_seeded(server, tmp_path):
    images_tar, lists_tar, _ = stanford_dogs()
    sources = served_sources(server, images_tar, lists_tar)
    config = stanford_config(train_per_class=2, test_per_class=1)
    for run in ("a", "b"):
        counts = images.build_dataset(config, tmp_path / run, tmp_path / "cache", sources)
        assert (counts["train"], counts["validation"], counts["test"]) == (6, 3, 3)
    for split in ("train", "validation"):
        a, b = (sorted(p.name for p in (tmp_path / r / split).rglob("*.jpg")) for r in "ab")
        assert a == b


def test_hash_mismatch_keeps_the_old_dataset_and_leaves_nothing(server, tmp_path):
    images_tar, lists_tar, _ = stanford_dogs()
    out = tmp_path / "dogs"
    (out / "train" / "old").mkdir(parents=True)
    sources = served_sources(server, images_tar, lists_tar, stanford_dogs_images="0" * 64)
    with pytest.raises(SourceError, match="stanford_dogs_images.*sha256 mismatch: expected 0000"):
        images.build_dataset(stanford_config(), out, tmp_path / "cache", sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "dogs"]
    assert (out / "train" / "old").is_dir()


def test_a_truncated_tar_is_refused(server, tmp_path):
    images_tar, lists_tar, _ = stanford_dogs()
    # Cut inside a member, hashed as cut: the download verifies, the unpacking must not.
    cut = images_tar[: len(images_tar) // 2 + 700]
    sources = served_sources(server, cut, lists_tar)
    with pytest.raises(SourceError, match="truncated or corrupt archive"):
        images.build_dataset(stanford_config(), tmp_path / "dogs", tmp_path / "cache", sources)
    assert not (tmp_path / "dogs").exists()


def test_a_member_escaping_with_dotdot_is_refused(server, tmp_path):
    images_tar, lists_tar, _ = stanford_dogs()
    evil = tar_archive({"Images/../../evil.jpg": jpeg(1)})
    sources = served_sources(server, evil, lists_tar)
    with pytest.raises(SourceError, match=r"refusing member 'Images/\.\./\.\./evil\.jpg'"):
        images.build_dataset(stanford_config(), tmp_path / "dogs", tmp_path / "cache", sources)
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "dogs").exists()


def test_a_listed_image_missing_from_the_archive_names_it(server, tmp_path):
    images_tar, _, names = stanford_dogs()
    lists = tar_archive(
        {
            "train_list.mat": mat_list([*names["train"], f"{BREEDS[0]}/missing.jpg"]),
            "test_list.mat": mat_list(names["test"]),
        }
    )
    sources = served_sources(server, images_tar, lists)
    with pytest.raises(DataError, match="missing.jpg: listed in the train list"):
        images.build_dataset(stanford_config(), tmp_path / "dogs", tmp_path / "cache", sources)


def test_oxford_pet_lists_take_the_breed_from_the_name(tmp_path):
    (tmp_path / "trainval.txt").write_text("Abyssinian_100 1 1 1\nbasset_hound_12 4 2 2\n")
    (tmp_path / "test.txt").write_text("Abyssinian_2 1 1 1\n")
    lists = images.oxford_pet_lists(tmp_path)
    assert lists["train"] == [
        ("Abyssinian_100.jpg", "Abyssinian"),
        ("basset_hound_12.jpg", "basset_hound"),
    ]
    (tmp_path / "test.txt").write_text("no-number 1 1 1\n")
    with pytest.raises(DataError, match=r"test\.txt:1: expected `<Breed>_<n> \.\.\.`"):
        images.oxford_pet_lists(tmp_path)


def test_mnist_is_written_as_3_channel_png_in_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    split = lambda n: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 3)  # noqa: E731
    config = ImageDataConfig("mnist", None, None, 2, 1, None, seed=3)
    counts = images.build_dataset(config, tmp_path / "digits", tmp_path, {}, (split(9), split(6)))
    assert (counts["train"], counts["validation"], counts["test"]) == (6, 3, 6)
    paths, labels, classes = images.list_split(tmp_path / "digits", "train")
    assert classes == ["0", "1", "2"] and np.bincount(labels).tolist() == [2, 2, 2]
    assert np.asarray(Image.open(paths[0])).shape == (28, 28, 3)


def test_no_held_out_image_equals_a_training_image(tmp_path):
    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    test_x[:4] = train_x[0]  # four test digits copied from one training digit (class 0)
    labels = np.arange(12) % 3, np.zeros(6, dtype=np.int64)
    config = ImageDataConfig("mnist", None, None, None, 1, None, seed=3)
    out = tmp_path / "digits"
    mnist = ((train_x, labels[0]), (test_x, labels[1]))
    counts = images.build_dataset(config, out, tmp_path, {}, mnist)
    digests = {
        split: [images.file_digest(p) for p in images.list_split(out, split)[0]]
        for split in ("train", "validation", "test")
    }
    seen = set(digests["train"])
    assert not seen & set(digests["validation"])
    assert not (seen | set(digests["validation"])) & set(digests["test"])
    # The original is a training or a validation digit: every copy is dropped.
    assert counts["test_overlap_dropped"] == 4
    assert counts["test"] == 2 == len(digests["test"])


def test_a_test_class_unknown_to_training_is_one_its_models_cannot_read(tmp_path):
    for split, name in (("train", "a"), ("test", "b")):
        (tmp_path / split / name).mkdir(parents=True)
        (tmp_path / split / name / "x.png").write_bytes(b"")
    _, _, classes = images.list_split(tmp_path, "train")
    with pytest.raises(IncompatibleDataError, match=r"test/b: class not in the training split"):
        images.list_split(tmp_path, "test", classes)


def test_images_sharing_a_size_are_decoded_with_it_known(tmp_path):
    paths = []
    for index, size in enumerate([(23, 17), (23, 17), (17, 23)]):
        paths.append(str(tmp_path / f"{index}.jpg"))
        Path(paths[-1]).write_bytes(jpeg(index, size))
    assert images.shared_shape(paths[:2]) == (23, 17)  # (height, width)
    assert images.shared_shape(paths) is None
    files = images.image_files(paths[:2], np.array([0, 1]))
    decoded = images.decoded_images(files, shape=(23, 17))
    assert tuple(decoded.element_spec[0].shape) == (23, 17, 3)
    assert [tuple(image.shape) for image, _ in decoded] == [(23, 17, 3)] * 2
    wrong = images.decoded_images(images.image_files(paths[2:], np.array([0])), shape=(23, 17))
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(wrong)
