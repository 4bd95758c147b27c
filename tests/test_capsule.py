"""Capsule model: MNIST reading, the validation split and the two-digit sets, no test digit
seen in training, the pair metric by hand, a tiny training run of both models (the baseline
stage's function) and the evaluation's per-item scores, the pyfunc on PNG bytes, base64 and
arrays, bad images, the CLI; one's own folder of images in either layout instead of MNIST
(grey 28 x 28, unreadable files skipped and counted, its class names through to the
evaluation)."""

import base64
import dataclasses
import gzip
import json
import pickle
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import REPO, assert_exported_with_example, tiny_runtime
from test_images import CLASSES, folder_config, one_level_tree, split_tree

from kexue import cli, params, registry, stats, tracking
from kexue.datasets import capsule as capsule_data
from kexue.errors import DataError, IncompatibleDataError
from kexue.models import capsule

PATTERNS = np.random.default_rng(7).random((10, 6, 6)) > 0.5


def glyphs(labels: np.ndarray, rng) -> np.ndarray:
    """A stand-in digit per label: its class's random 6x6 pattern, drawn 3 pixels per cell in
    the middle, with pixel noise (float 0..1, flattened like mnist.pkl.gz). Local shapes, not
    positions, tell the classes apart, as in MNIST."""
    images = rng.uniform(0, 0.1, (len(labels), 28, 28)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        image[5:23, 5:23] += 0.89 * np.kron(PATTERNS[label], np.ones((3, 3)))
    return images.reshape(len(labels), 784)


def write_mnist(path, sizes: tuple[int, int, int], seed: int):
    """A stand-in mnist.pkl.gz of glyphs: (train, valid, test) of these sizes."""
    rng = np.random.default_rng(seed)
    splits = []
    for size in sizes:
        labels = rng.integers(0, 10, size)
        splits.append((glyphs(labels, rng), labels))
    with gzip.open(path, "wb") as file:
        pickle.dump(tuple(splits), file)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("capsule")
    source = write_mnist(root / "mnist.pkl.gz", (300, 100, 200), seed=0)
    config = params.parse(
        capsule.Config, params.block(params.load(REPO / "params.yaml"), "capsule"), "capsule"
    )
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, train_size=None, test_size=None, pairs=50),
        model=dataclasses.replace(config.model, conv_filters=[8, 8], capsule_dim=4),
        train=dataclasses.replace(
            config.train, epochs=20, patience=20, batch_size=32, learning_rate=0.01
        ),
    )
    counts = capsule_data.prepare(config, [source], root / "data")
    return {"config": config, "root": root, "source": source, "counts": counts}


def test_prepare_keeps_the_official_test_and_takes_validation_out_of_training(tiny):
    assert tiny["counts"] == {
        "train": 360,
        "validation": 40,
        "test": 200,
        "pairs": 50,
        "validation_overlap_dropped": 0,
        "test_overlap_dropped": 0,
        "skipped": 0,
    }
    data = tiny["root"] / "data"
    assert capsule.class_names(data) == [str(d) for d in range(10)]
    x, y = capsule.load_npz(data / "train.npz")
    assert x.shape == (360, 28, 28) and x.dtype == np.uint8
    for name in ("pairs", "validation_pairs"):
        pair_x, pair_y = capsule.load_npz(data / f"{name}.npz")
        assert pair_x.shape == (50, 2, 28, 28)
        assert (pair_y[:, 0] != pair_y[:, 1]).all()
    pair_x, pair_y = capsule.load_npz(data / "pairs.npz")
    test_x, test_y = capsule.load_npz(data / "test.npz")
    # Each digit of a test pair is a test digit with its label.
    for digit in (0, 1):
        found = [np.flatnonzero((test_x == p).all(axis=(1, 2))) for p in pair_x[:5, digit]]
        assert all(test_y[i[0]] == y for i, y in zip(found, pair_y[:5, digit], strict=True))


def test_no_held_out_digit_equals_a_training_digit(tiny, tmp_path):
    source = tmp_path / "mnist.pkl.gz"
    rng = np.random.default_rng(3)
    splits = []
    for size in (60, 20, 30):
        labels = rng.integers(0, 10, size)
        splits.append((glyphs(labels, rng), labels))
    # A test digit and three validation-side digits copied from the first training digit.
    for split, index in ((2, 0), (1, 5), (1, 6), (0, 40)):
        splits[split][0][index] = splits[0][0][0]
    with gzip.open(source, "wb") as file:
        pickle.dump(tuple(splits), file)
    counts = capsule_data.prepare(tiny["config"], [source], tmp_path / "data")
    assert counts["test_overlap_dropped"] == 1 and counts["test"] == 29
    keys = {
        side: {x.tobytes() for x in capsule.load_npz(tmp_path / "data" / f"{side}.npz")[0]}
        for side in ("train", "validation", "test")
    }
    assert not keys["test"] & (keys["train"] | keys["validation"])
    assert not keys["validation"] & keys["train"]


def test_shifted_moves_a_digit_within_the_bounds_and_keeps_it_whole():
    image = np.zeros((28, 28, 1), np.float32)
    image[10:14, 12:15] = 1  # a 4 x 3 blob
    moved = [
        capsule.shifted(tf.constant(image), 4, tf.constant([7, i], tf.int64)).numpy()
        for i in range(30)
    ]
    tops = {int(np.argwhere(m[..., 0])[0, 0]) for m in moved}
    lefts = {int(np.argwhere(m[..., 0])[:, 1].min()) for m in moved}
    assert all(m.shape == (28, 28, 1) and m.sum() == 12 for m in moved)
    assert tops <= set(range(6, 15)) and lefts <= set(range(8, 17)) and len(tops) > 1
    again = capsule.shifted(tf.constant(image), 4, tf.constant([7, 0], tf.int64)).numpy()
    assert (again == moved[0]).all()  # seeded
    assert (
        (capsule.shifted(tf.constant(image), 0, tf.constant([7, 0], tf.int64)) == image)
        .numpy()
        .all()
    )


def test_two_digit_images_stack_like_the_post_or_sit_side_by_side():
    pairs = np.arange(2 * 2 * 28 * 28, dtype=np.uint8).reshape(2, 2, 28, 28)
    stacked = capsule.two_digit_images(pairs, "stacked")
    side = capsule.two_digit_images(pairs, "side")
    assert stacked.shape == (2, 56, 28) and side.shape == (2, 28, 56)
    assert (stacked[1, 28:] == pairs[1, 1]).all() and (side[1, :, :28] == pairs[1, 0]).all()


def test_train_size_takes_a_seeded_sample(tiny, tmp_path):
    config = dataclasses.replace(
        tiny["config"], data=dataclasses.replace(tiny["config"].data, train_size=50)
    )
    capsule_data.prepare(config, [tiny["source"]], tmp_path / "a")
    capsule_data.prepare(config, [tiny["source"]], tmp_path / "b")
    a, b = (capsule.load_npz(tmp_path / d / "train.npz")[1] for d in "ab")
    assert len(a) == 50 and (a == b).all()
    validation = capsule.load_npz(tmp_path / "a" / "validation.npz")[1]
    assert len(validation) == 40  # a tenth of all the training digits, before the sample


def test_a_file_that_is_not_mnist_is_a_clear_error(tiny, tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: expected MNIST's"):
        capsule_data.prepare(tiny["config"], [bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pair_hits_by_hand():
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0, 0, 0, 0, 0, 0, 0],  # top 2: {0, 1}
            [0.9, 0.1, 0.8, 0, 0, 0, 0, 0, 0, 0],  # top 2: {0, 2}
            [0.1, 0.9, 0.8, 0, 0, 0, 0, 0, 0, 0],  # top 2: {1, 2}
        ]
    )
    pairs = np.array([[1, 0], [0, 1], [2, 1]])
    assert capsule.pair_hits(scores, pairs).tolist() == [1, 0, 1]
    # Sure as well: both of the two best lengths above 0.5 (the third row's 0.8 and 0.9 are).
    assert capsule.pair_hits(scores, pairs, threshold=0.85).tolist() == [0, 0, 0]
    assert capsule.pair_hits(scores, pairs, threshold=0.5).tolist() == [1, 0, 1]
    assert capsule.correct(scores, np.array([0, 0, 2])).tolist() == [1, 1, 0]


@pytest.fixture(scope="module")
def trained(tiny):
    root = tiny["root"]
    runtime = tiny_runtime(root)
    summary = capsule.train(
        tiny["config"], runtime, root / "data", None, root / "model", root / "c.csv"
    )
    baselines = capsule.train_baselines(
        tiny["config"], runtime, root / "data", None, root / "baselines", root / "curves"
    )
    return {**tiny, "summary": summary, "baselines": baselines}


def test_training_reports_the_validation_figures(trained):
    summary, baselines = trained["summary"], trained["baselines"]
    assert 1 <= summary["best_epoch"] <= 20
    assert {"best_val_loss", "validation_acc", "validation_pair_acc"} <= set(summary)
    assert {"cnn_best_epoch", "cnn_best_val_loss", "cnn_validation_acc"} <= set(baselines)
    assert (trained["root"] / "baselines" / capsule.BASELINE_FILE).is_file()
    assert len(pd.read_csv(trained["root"] / "curves" / "cnn.csv")) >= baselines["cnn_best_epoch"]


def test_tiny_models_learn_the_stand_in_digits(trained):
    root = trained["root"]
    metrics, scores = capsule.evaluate(
        trained["config"], root / "data", None, root / "model", root / "plots", root / "baselines"
    )
    assert metrics == {
        "test_digits": 200,
        "test_pairs": 50,
        "test_overlap": 0,
        "skipped_images": 0,
    }
    by_metric = {score.metric: score for score in scores}
    assert list(by_metric) == ["acc", "pair_acc", "pair_sure_acc", "pair_side_acc"]
    assert capsule.SCORE in by_metric
    assert by_metric["acc"].model.shape == (200,) and by_metric["pair_acc"].model.shape == (50,)
    assert set(by_metric["acc"].baselines) == {"cnn"}
    assert by_metric["acc"].model.mean() > 0.4  # chance: 0.1
    config = stats.BootstrapConfig(samples=50, confidence=0.95, seed=0)
    flat = stats.comparisons(scores, config)
    assert {"acc", "acc_cnn", "acc_vs_cnn", "acc_vs_cnn_low", "pair_acc_vs_cnn_high"} <= set(flat)
    rows = pd.read_json(root / "plots" / "accuracy.json")
    assert list(rows["system"]) == [
        f"{model}, {test}"
        for model in ("capsule", "cnn")
        for test in (
            "one digit",
            "two digits stacked",
            "two digits stacked, both lengths > 0.5",
            "two digits side by side",
        )
    ]


@pytest.fixture(scope="module")
def pyfunc_dir(trained, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    out = store / "pyfunc"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlruns.db'}")
        with tracking.stage_run("capsule", "export", {}, data_hash="h"):
            registry.export_pyfunc(
                out, capsule.pyfunc(trained["config"], None, trained["root"] / "model")
            )
    return out


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(pyfunc_dir):
    assert_exported_with_example(pyfunc_dir)


def png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(np.uint8(image * 255)[..., None]).numpy()


def test_pyfunc_reads_png_bytes_base64_and_arrays_alike(pyfunc_dir, trained):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    x, y = capsule.load_npz(trained["root"] / "data" / "test.npz")
    image = x[0] / 255
    pair = np.concatenate([x[0], x[1]], axis=1) / 255
    inputs = [png(image), base64.b64encode(png(image)).decode(), image.tolist(), png(pair)]
    out = model.predict(pd.DataFrame({"image": inputs}))
    assert list(out.columns) == ["digit", "top2", "scores", "label", "top2_labels"]
    assert out["digit"][0] == out["digit"][1] == out["digit"][2]
    assert out["label"][0] == str(out["digit"][0])  # MNIST's class names are its digits
    assert out["top2_labels"][3] == [str(d) for d in out["top2"][3]]
    np.testing.assert_allclose(out["scores"][0], out["scores"][2], atol=0.02)  # PNG rounds
    assert len(out["scores"][0]) == 10 and out["top2"][0][0] == out["digit"][0]
    assert len(out["top2"][3]) == 2


def test_pyfunc_scales_an_image_to_28_high(pyfunc_dir, trained):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    x, y = capsule.load_npz(trained["root"] / "data" / "test.npz")
    big = np.kron(x[0] / 255, np.ones((2, 2)))  # 56 x 56
    both = model.predict(pd.DataFrame({"image": [png(x[0] / 255), png(big)]}))
    assert both["digit"][0] == both["digit"][1]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"GIF89a not really", "row 0: 'image' is not a PNG or JPEG image"),
        ("%%%", "row 0: 'image' text is not base64"),
        ([[1.0, 2.0], [3.0]], "row 0: 'image' must be PNG/JPEG bytes, base64 text or a 2-D array"),
        (
            np.zeros((1000, 28)).tolist(),
            "1000 pixels long when its shorter side is 28; the limit is 560",
        ),
    ],
)
def test_pyfunc_refuses_what_is_not_an_image(pyfunc_dir, value, message):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(pd.DataFrame({"image": [value]}))


def test_cli_digits_reads_image_files(pyfunc_dir, trained, tmp_path, capsys):
    x, y = capsule.load_npz(trained["root"] / "data" / "test.npz")
    (tmp_path / "one.png").write_bytes(png(x[0] / 255))
    args = ["digits", "--model", str(pyfunc_dir), str(tmp_path / "one.png")]
    assert cli.main(args) == 0
    path, digit, top2 = capsys.readouterr().out.strip().split("\t")
    assert path.endswith("one.png") and digit in "0123456789" and top2.startswith(f"{digit},")
    assert cli.main(["digits", "--model", str(pyfunc_dir), str(tmp_path / "none.png")]) == 1
    assert "none.png: cannot read the image" in capsys.readouterr().err


def folder_capsule_config(tiny, root):
    """The tiny config reading the folder at `root` (the same split as test_images')."""
    split = folder_config(root).folder_split
    data = dataclasses.replace(
        tiny["config"].data, source="folder", folder=str(root), folder_split=split, pairs=20
    )
    return dataclasses.replace(tiny["config"], data=data)


@pytest.mark.parametrize(
    ("tree", "counts"),
    [
        (one_level_tree, {"train": 12, "validation": 3, "test": 6}),
        (split_tree, {"train": 15, "validation": 3, "test": 6}),
    ],
)
def test_prepare_reads_a_folder_of_mixed_images_as_grey_28_by_28(tiny, tmp_path, tree, counts):
    unreadable = tree(tmp_path / "mine")
    config = folder_capsule_config(tiny, tmp_path / "mine")
    data = tmp_path / "data"
    found = capsule_data.prepare(config, [], data)
    dropped = {"validation_overlap_dropped": 0, "test_overlap_dropped": 0}
    assert found == {**counts, "pairs": 20, **dropped, "skipped": len(unreadable)}
    assert capsule.class_names(data) == CLASSES
    assert json.loads((data / "counts.json").read_text()) == found
    for side, count in counts.items():
        x, y = capsule.load_npz(data / f"{side}.npz")
        assert x.shape == (count, 28, 28) and x.dtype == np.uint8
        assert np.bincount(y).tolist() == [count // 3] * 3
    pair_x, pair_y = capsule.load_npz(data / "pairs.npz")
    test_x, test_y = capsule.load_npz(data / "test.npz")
    assert pair_x.shape == (20, 2, 28, 28) and (pair_y[:, 0] != pair_y[:, 1]).all()
    for image, label in zip(pair_x[:, 0], pair_y[:, 0], strict=True):  # held-out images
        assert label in test_y[(test_x == image).all(axis=(1, 2))]


def test_a_folder_with_too_few_images_is_one_clear_line(tiny, tmp_path):
    one_level_tree(tmp_path / "mine")
    for extra in sorted((tmp_path / "mine" / "cat").iterdir())[3:]:
        extra.unlink()
    with pytest.raises(DataError, match=r"/mine/cat: 3 readable images; expected at least 5"):
        capsule_data.prepare(folder_capsule_config(tiny, tmp_path / "mine"), [], tmp_path / "data")


def test_a_split_is_read_in_the_models_labels_and_a_new_class_is_unreadable(tmp_path):
    # The champion of other data: its labels, or a class it never saw (the registry then
    # lets the new version take the alias).
    assert capsule.model_labels(["bee", "cat"], CLASSES, tmp_path).tolist() == [1, 2]
    unknown = r"classes\.json: class 'dog' is not one of the 3 classes"
    with pytest.raises(IncompatibleDataError, match=unknown):
        capsule.model_labels(["ant", "dog"], CLASSES, tmp_path)


def test_a_folder_trained_model_scores_its_own_classes(tiny, tmp_path):
    one_level_tree(tmp_path / "mine")
    config = folder_capsule_config(tiny, tmp_path / "mine")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    data = tmp_path / "data"
    capsule_data.prepare(config, [], data)
    model = tmp_path / "model"
    capsule.train(config, tiny_runtime(tmp_path), data, None, model, tmp_path / "c.csv")
    assert capsule.class_names(model) == CLASSES
    (tmp_path / "baselines").mkdir()  # the capsule net stands in for the CNN: same shapes
    shutil.copy(model / capsule.MODEL_FILE, tmp_path / "baselines" / capsule.BASELINE_FILE)
    metrics, _ = capsule.evaluate(
        config, data, None, tmp_path / "model", tmp_path / "plots", tmp_path / "baselines"
    )
    assert metrics == {"test_digits": 6, "test_pairs": 20, "test_overlap": 0, "skipped_images": 2}
    confusion = pd.read_json(tmp_path / "plots" / "confusion.json")
    assert set(confusion["actual"]) == set(CLASSES) and set(confusion["predicted"]) <= set(CLASSES)
