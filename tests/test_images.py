"""Class-per-folder image datasets: MNIST written out as PNG files, the Stanford Dogs path
(download from a local HTTP server, hash, official lists, unsafe or truncated archives) and
one's own folder in either layout (mixed formats, sizes and modes; unreadable files skipped
and counted; too few, empty or single classes refused); the validation part out of training,
and no held-out image byte for byte equal to a seen one."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
import yaml
from conftest import REPO
from file_server import sha256, tar_archive
from PIL import Image

from kexue.data import image_tensors, images
from kexue.data.images import FolderSplitConfig, ImageDataConfig
from kexue.data.sources import Source
from kexue.errors import DataError, IncompatibleDataError, ParamsError, SourceError

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


def image_config(dataset: str, **overrides) -> ImageDataConfig:
    values = {
        "dataset": dataset,
        "folder": "unused",
        "folder_split": FolderSplitConfig(0.2, 0.3, 5),
        "images_source": None,
        "lists_source": None,
        "train_per_class": None,
        "validation_per_class": 1,
        "test_per_class": None,
        "seed": 1,
    }
    return ImageDataConfig(**{**values, **overrides})


def stanford_config(**overrides) -> ImageDataConfig:
    return image_config(
        "stanford_dogs",
        images_source="stanford_dogs_images",
        lists_source="stanford_dogs_lists",
        **overrides,
    )


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
        "skipped": 0,
    }
    assert sorted(p.name for p in out.iterdir()) == ["counts.json", "test", "train", "validation"]
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
    config = image_config("mnist", train_per_class=2, seed=3)
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
    config = image_config("mnist", seed=3)
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
    files = image_tensors.image_files(paths[:2], np.array([0, 1]))
    decoded = image_tensors.decoded_images(files, shape=(23, 17))
    assert tuple(decoded.element_spec[0].shape) == (23, 17, 3)
    assert [tuple(image.shape) for image, _ in decoded] == [(23, 17, 3)] * 2
    wrong = image_tensors.decoded_images(
        image_tensors.image_files(paths[2:], np.array([0])), shape=(23, 17)
    )
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(wrong)


# -- one's own folder -------------------------------------------------------------------------


def encoded_image(seed: int, size: tuple[int, int], mode: str, kind: str) -> bytes:
    """Random pixels (width, height) in a Pillow `mode`, encoded as `kind`."""
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8))
    image = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


# One of each kind a class folder holds: name -> (size, mode, format).
MIXED = {
    "0.jpg": ((23, 17), "RGB", "JPEG"),
    "1.png": ((30, 30), "L", "PNG"),
    "2.png": ((12, 40), "RGBA", "PNG"),
    "3.png": ((25, 19), "P", "PNG"),
    "4.webp": ((31, 22), "RGB", "WEBP"),
    "5.bmp": ((16, 16), "RGB", "BMP"),
    "6.jpeg": ((40, 28), "L", "JPEG"),
}
CLASSES = ["ant", "bee", "cat"]


def write_class(folder: Path, seed: int, names=tuple(MIXED)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        size, mode, kind = MIXED[name]
        (folder / name).write_bytes(encoded_image(seed * 100 + index, size, mode, kind))


def write_unreadable(folder: Path) -> list[Path]:
    """A JPEG cut in half and a text file: the two files every tree here must skip."""
    truncated, text = folder / "cut.jpg", folder / "notes.txt"
    truncated.write_bytes(encoded_image(99, (40, 40), "RGB", "JPEG")[:300])
    text.write_text("not an image\n")
    return [truncated, text]


def one_level_tree(root: Path) -> list[Path]:
    """<class>/<image>: 7 readable images a class, the unreadable two, a hidden file."""
    for seed, name in enumerate(CLASSES):
        write_class(root / name, seed)
    (root / "ant" / ".DS_Store").write_bytes(b"\0\0")
    return write_unreadable(root / "bee")


def split_tree(root: Path) -> list[Path]:
    """train/<class>/ (6 a class) + test/<class>/ (2 a class), the unreadable two."""
    for seed, name in enumerate(CLASSES):
        write_class(root / "train" / name, seed, list(MIXED)[:6])
        write_class(root / "test" / name, seed + 10, list(MIXED)[5:])
    return write_unreadable(root / "test" / "cat")


def folder_config(root: Path, **split) -> ImageDataConfig:
    fractions = {"validation_fraction": 0.2, "test_fraction": 0.3, "min_per_class": 5, **split}
    return image_config("folder", folder=str(root), folder_split=FolderSplitConfig(**fractions))


@pytest.mark.parametrize(
    ("tree", "counts"),
    [
        (one_level_tree, {"train": 12, "validation": 3, "test": 6}),  # 7 a class: 4 + 1 + 2
        (split_tree, {"train": 15, "validation": 3, "test": 6}),  # 6 a class: 5 + 1; test 2
    ],
)
def test_a_folder_of_mixed_images_becomes_rgb_class_folders(tmp_path, capsys, tree, counts):
    unreadable = tree(tmp_path / "mine")
    out = tmp_path / "dogs"
    found = images.build_dataset(folder_config(tmp_path / "mine"), out, tmp_path, {})
    dropped = {"validation_overlap_dropped": 0, "test_overlap_dropped": 0}
    assert found == {**counts, **dropped, "skipped": 2}
    assert json.loads((out / "counts.json").read_text()) == found
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {unreadable[0]}: unreadable (Truncated File Read)",
        f"skipped {unreadable[1]}: not an image Pillow reads",
    ]
    classes = images.list_split(out, "train")[2]
    assert classes == CLASSES
    for split, count in counts.items():
        paths, labels, _ = images.list_split(out, split, classes)
        assert len(paths) == count and sorted(set(labels)) == [0, 1, 2]
        for path in paths:  # what the model reads: 3 channels, each image at its own size
            assert image_tensors.decode(tf.io.read_file(path)).shape[-1] == 3
    written = {p.name for p in out.glob("*/ant/*")}
    assert written == {"0.jpg", "1.png", "2.png", "3.png", "4.webp.png", "5.bmp.png", "6.jpeg"}
    if tree is one_level_tree:  # grey/RGB JPEG and PNG as they are; the rest as RGB PNG
        assert (
            next(out.glob("*/ant/0.jpg")).read_bytes() == (tmp_path / "mine/ant/0.jpg").read_bytes()
        )
        assert Image.open(next(out.glob("*/ant/2.png"))).mode == "RGB"
    else:  # the test folder stays the test split
        test = {p.relative_to(out / "test") for p in (out / "test").glob("*/*")}
        assert test == {Path(c) / n for c in CLASSES for n in ("5.bmp.png", "6.jpeg")}


def test_a_folder_split_is_seeded_and_capped_per_class(tmp_path):
    one_level_tree(tmp_path / "mine")
    config = dataclasses.replace(folder_config(tmp_path / "mine"), train_per_class=2)
    for run in ("a", "b"):
        counts = images.build_dataset(config, tmp_path / run, tmp_path, {})
        assert (counts["train"], counts["validation"], counts["test"]) == (6, 3, 6)
    listed = [
        sorted(p.relative_to(tmp_path / r) for p in (tmp_path / r).glob("*/*/*")) for r in "ab"
    ]
    assert listed[0] == listed[1]


def class_of_three(root: Path) -> None:
    write_class(root / "ant", 0)
    write_class(root / "bee", 1, list(MIXED)[:3])


@pytest.mark.parametrize(
    ("make", "split", "message"),
    [
        (
            lambda root: (write_class(root / "ant", 0), (root / "bee").mkdir()),
            {},
            r"/mine/bee: empty class folder; expected images of that class$",
        ),
        (
            lambda root: write_class(root / "ant", 0),
            {},
            r"/mine: 1 class folder\(s\); expected at least 2, one per class \(<class>/<image>\)$",
        ),
        (
            class_of_three,
            {},
            r"/mine/bee: 3 readable images; expected at least 5 for train \+ validation \+ test "
            r"\(dogs\.data\.folder_split\)$",
        ),
        (  # fewer than the fractions need, whatever min_per_class says: 1 + 1 + 1
            lambda root: (class_of_three(root), write_class(root / "cat", 2, ["0.jpg", "1.png"])),
            {"min_per_class": 1},
            r"/mine/cat: 2 readable images; expected at least 3 for train \+ validation \+ test",
        ),
        (
            lambda root: (
                write_class(root / "train" / "ant", 0),
                write_class(root / "train" / "bee", 1),
            ),
            {},
            r"/mine/test: not found; expected test/<class>/ beside train/<class>/ \(or <class>/ "
            r"folders only\)$",
        ),
        (
            lambda root: (split_tree(root), (root / "validation" / "ant").mkdir(parents=True)),
            {},
            r"/mine/validation: a folder beside train/; expected train/<class>/ and "
            r"test/<class>/ only \(validation comes out of train\)$",
        ),
    ],
)
def test_a_folder_that_cannot_be_split_is_one_clear_line(tmp_path, make, split, message):
    make(tmp_path / "mine")
    out = tmp_path / "dogs"
    (out / "train" / "old").mkdir(parents=True)
    with pytest.raises(DataError, match=message) as raised:
        images.build_dataset(folder_config(tmp_path / "mine", **split), out, tmp_path, {})
    assert "\n" not in str(raised.value)
    # Nothing half-written: the old dataset stays, no staging folder is left behind.
    assert (out / "train" / "old").is_dir() and sorted(p.name for p in out.rglob("*")) == [
        "old",
        "train",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dogs", "mine"]


def test_folder_fractions_must_leave_images_for_training(tmp_path):
    one_level_tree(tmp_path / "mine")
    config = folder_config(tmp_path / "mine", validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ParamsError, match=r"dogs\.data\.folder_split: expected validation_"):
        images.build_dataset(config, tmp_path / "dogs", tmp_path, {})


@pytest.mark.slow
def test_the_fetch_images_stage_reads_the_folder_params_name(tmp_path):
    """`dvc exp run -S dogs.data.dataset=folder -S dogs.data.folder=mine`, the stage alone:
    skipped files on stderr, the counts on stdout; a bad folder is one line and exit 1."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["dogs"]["data"].update(dataset="folder", folder="mine")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    unreadable = one_level_tree(tmp_path / "mine")
    command = [sys.executable, str(REPO / "stages" / "fetch_images.py"), "dogs", "out"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["skipped"] == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("skipped ")] == [
        f"skipped mine/{p.relative_to(tmp_path / 'mine')}: {reason}"
        for p, reason in zip(
            unreadable,
            ["unreadable (Truncated File Read)", "not an image Pillow reads"],
            strict=True,
        )
    ]
    for name in ("ant", "bee"):
        shutil.rmtree(tmp_path / "mine" / name)
    failed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        "error: mine: 1 class folder(s); expected at least 2, one per class (<class>/<image>)"
    )
