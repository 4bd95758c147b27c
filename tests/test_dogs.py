"""Image classifier (dogs): center loss and gate by hand, backbone weights from a model file,
a tiny phased fine-tuning and its baseline (the baseline stage's function) with early
stopping on validation, evaluation's per-image scores and test overlap, the saved model,
the pyfunc on PNG/JPEG/base64 of odd sizes and on corrupt images, the CLI. The full
profile's code path (Xception on the Stanford Dogs layout) is tests/test_full_profile.py."""

import base64
import dataclasses
import io
import json

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_exported_with_example, tiny_runtime
from PIL import Image

from kexue import cli, params, registry, stats, tracking, training
from kexue.data import image_tensors, images
from kexue.errors import DataError, IncompatibleDataError, ParamsError
from kexue.layers.center import CenterLoss
from kexue.layers.gate import FeatureGate
from kexue.models import dogs

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def encoded(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def colour_image(rng, colour: str, height: int, width: int) -> np.ndarray:
    """A noisy picture dominated by one colour: the class."""
    noise = rng.integers(-30, 30, (height, width, 3))
    return np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)


def test_center_loss_by_hand():
    layer = CenterLoss(3)
    features = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]], np.float32)
    labels = np.array([2, 0, 2])
    layer.build([features.shape, labels.shape])
    centers = np.array([[0.5, 0.5], [9.0, 9.0], [1.0, 1.0]], np.float32)
    layer.set_weights([centers])
    # 0.5 * |f - c_y|^2: (0 + 1) / 2, (0.25 + 2.25) / 2, (4 + 4) / 2
    np.testing.assert_allclose(layer([features, labels]), [0.5, 1.25, 4.0], rtol=1e-6)


def test_center_loss_pulls_the_centers_to_the_class_means():
    features = keras.Input((2,))
    labels = keras.Input((), dtype="int32")
    model = keras.Model([features, labels], CenterLoss(2)([features, labels]))
    model.compile(keras.optimizers.SGD(0.5), loss=dogs.center_term)  # plain gradient steps
    x = np.array([[1.0, 1.0], [3.0, 1.0], [0.0, -2.0]], np.float32)
    y = np.array([0, 0, 1])
    model.fit([x, y], np.zeros(3), epochs=80, batch_size=3, verbose=0)
    np.testing.assert_allclose(model.layers[-1].get_weights()[0], [[2, 1], [0, -2]], atol=1e-3)


def test_feature_gate_by_hand():
    gate = FeatureGate()
    features = np.array([[1.0, -2.0]], np.float32)
    gate.build(features.shape)
    kernel, bias = np.array([[0.5, 0.0], [1.0, -1.0]], np.float32), np.array([0.0, 1.0])
    gate.set_weights([kernel, bias.astype(np.float32)])
    expected = features / (1 + np.exp(-(features @ kernel + bias)))
    np.testing.assert_allclose(gate(features), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def config():
    loaded = params.parse(
        dogs.Config, params.block(params.load(REPO / "params.yaml"), "dogs"), "dogs"
    )
    train = loaded.train
    return dataclasses.replace(
        loaded,
        model=dataclasses.replace(loaded.model, weights=None, image_size=32),
        train=dataclasses.replace(
            train,
            batch_size=8,
            head=dataclasses.replace(train.head, epochs=1),
            top=dataclasses.replace(train.top, epochs=1, from_layer="block_16_expand"),
            all=dataclasses.replace(train.all, epochs=1),
        ),
    )


def test_backbone_weights_come_from_the_named_submodel(config, tmp_path):
    model_config = dataclasses.replace(config.model, weights=None)
    inner = dogs.load_backbone(model_config)
    inner.name = "inner_backbone"
    image = keras.Input((32, 32, 3))
    outer = keras.Model(image, keras.layers.Dense(2)(keras.layers.Flatten()(inner(image))))
    outer.save(tmp_path / "saved.keras")
    from_file = dataclasses.replace(
        model_config,
        weights=str(tmp_path / "saved.keras"),
        weights_submodel="inner_backbone",
        image_size=64,  # another size than saved: convolution weights fit any
    )
    loaded = dogs.load_backbone(from_file)
    assert loaded.input_shape == (None, 64, 64, 3)
    for got, want in zip(loaded.get_weights(), inner.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(DataError, match=r"saved\.keras: no layer 'nope'"):
        dogs.load_backbone(dataclasses.replace(from_file, weights_submodel="nope"))
    with pytest.raises(DataError, match=r"missing\.h5: backbone weights not found"):
        dogs.load_backbone(dataclasses.replace(from_file, weights=str(tmp_path / "missing.h5")))


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A class-per-folder set: 3 colours, 12 training, 3 validation and 4 test pictures
    each, odd sizes."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("validation", 3), ("test", 4)):
        for colour in COLOURS:
            folder = root / "data" / split / colour
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = colour_image(rng, colour, 20 + i, 30 - i)
                (folder / f"{i}.png").write_bytes(encoded(pixels, "PNG"))
    # What fetch_images writes beside the splits; as if it had skipped 2 unreadable files.
    (root / "data" / images.COUNTS_FILE).write_text(json.dumps({"skipped": 2}))
    return root


@pytest.fixture(scope="module")
def model_dir(config, tmp_path_factory):
    """What train_dogs writes, from an untrained network over the colour classes (quick)."""
    folder = tmp_path_factory.mktemp("model")
    network = dogs.build_network(config, len(COLOURS), dogs.load_backbone(config.model))
    training.save_model(network.classifier, folder / dogs.MODEL_FILE)
    (folder / dogs.CLASSES_FILE).write_text(json.dumps(list(COLOURS)), encoding="utf-8")
    return folder


def test_a_model_saved_as_keras_loads_back_with_the_same_predictions(config, tmp_path):
    network = dogs.build_network(config, 4, dogs.load_backbone(config.model))
    batch = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    training.save_model(network.classifier, tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    expected = network.classifier(batch)
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), expected, atol=1e-6)


@pytest.mark.slow
def test_phases_and_baseline_run_and_report(config, colours):
    """The mechanics on a tiny random backbone (frozen random features cannot tell colours
    apart: accuracy is the pipeline's business, metrics/dogs.json)."""
    root = colours
    runtime = tiny_runtime(root)
    summary = dogs.train(config, runtime, root / "data", None, root / "model", root / "train.csv")
    assert summary["train_images"] == 36 and summary["validation_images"] == 9
    assert summary["classes"] == 3
    assert {"head_best_epoch", "top_val_loss", "all_val_accuracy", "validation_acc"} <= set(summary)
    curve = pd.read_csv(root / "train.csv")
    assert curve["phase"].tolist() == [1, 2, 3] and curve["epoch"].tolist() == [1, 2, 3]
    assert {"val_loss", "val_accuracy"} <= set(curve.columns)
    baselines = dogs.train_baselines(
        config, runtime, root / "data", None, root / "baselines", root / "curves"
    )
    assert baselines["scratch_max_epochs"] == 3  # head + top + all
    assert 1 <= baselines["scratch_best_epoch"] <= 3 and "scratch_val_loss" in baselines
    assert len(pd.read_csv(root / "curves" / "scratch.csv")) <= 3
    metrics, scores = dogs.evaluate(
        config, root / "data", None, root / "model", root / "plots", root / "baselines"
    )
    assert metrics == {"test_images": 12, "classes": 3, "test_overlap": 0, "skipped_images": 2}
    by_metric = {score.metric: score for score in scores}
    assert list(by_metric) == [dogs.SCORE, "top5"]
    assert by_metric["top5"].model.tolist() == [1.0] * 12  # 3 classes: the top 5 hold all
    assert by_metric["acc"].model.shape == (12,) and set(by_metric["acc"].baselines) == {"scratch"}
    flat = stats.comparisons(scores, stats.BootstrapConfig(samples=20, confidence=0.95, seed=0))
    assert {"acc", "acc_scratch", "acc_vs_scratch_low", "top5_vs_scratch"} <= set(flat)
    confusion = pd.read_json(root / "plots" / "confusion.json")
    assert set(confusion["actual"]) == set(COLOURS) and len(confusion) == 12


def test_test_overlap_counts_byte_identical_test_images(config, colours, model_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(colours / "data", data)
    copied = next((data / "train" / "red").iterdir())
    shutil.copy(copied, data / "test" / "red" / "copy.png")
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    shutil.copy(model_dir / dogs.MODEL_FILE, baselines / dogs.BASELINE_FILE)
    metrics, _ = dogs.evaluate(config, data, None, model_dir, tmp_path / "plots", baselines)
    assert metrics["test_overlap"] == 1
    assert metrics["skipped_images"] == 2  # fetch_images' count, carried to the metrics


def test_a_model_of_another_image_size_cannot_read_the_split(config, colours, model_dir, tmp_path):
    """How a champion trained on other images says it cannot be scored on a new split."""
    larger = dataclasses.replace(config, model=dataclasses.replace(config.model, image_size=48))
    with pytest.raises(
        IncompatibleDataError,
        match=r"model\.keras reads 32-pixel images; params\.yaml: dogs\.model\.image_size is 48",
    ):
        dogs.evaluate(larger, colours / "data", None, model_dir, tmp_path / "plots", tmp_path)


def test_top_layer_must_exist(config):
    with pytest.raises(ParamsError, match="dogs.train.top.from_layer: .* no layer 'block_99'"):
        dogs.unfreeze(dogs.load_backbone(config.model), "block_99")


@pytest.fixture(scope="module")
def pyfunc_dir(config, model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    out = store / "pyfunc"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlruns.db'}")
        with tracking.stage_run("dogs", "export", {}, data_hash="h"):
            registry.export_pyfunc(out, dogs.pyfunc(config, None, model_dir))
    return out


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(pyfunc_dir):
    assert_exported_with_example(pyfunc_dir)


def test_pyfunc_answers_png_and_jpeg_of_odd_sizes_and_base64(pyfunc_dir):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    rng = np.random.default_rng(5)
    png = encoded(colour_image(rng, "red", 37, 23), "PNG")
    jpeg = encoded(colour_image(rng, "blue", 51, 97), "JPEG")
    grey = encoded(np.full((9, 13), 128, np.uint8), "PNG")
    frame = pd.DataFrame({"image": [png, jpeg, base64.b64encode(jpeg).decode(), grey]})
    out = model.predict(frame, params={"top_k": 2})
    assert list(out.columns) == ["label", "classes", "probabilities"]
    assert all(len(c) == 2 and c[0] in COLOURS for c in out["classes"]), out
    assert out["classes"][1] == out["classes"][2]  # the JPEG and its base64 alike
    probabilities = np.array(out["probabilities"].tolist())
    assert (np.diff(probabilities, axis=1) <= 0).all() and (probabilities <= 1).all()
    # Resizing and scaling happen inside: the same as the network on the resized pixels.
    pixels = image_tensors.decode_resize(png, 32).numpy()[None]
    network = keras.models.load_model(pyfunc_dir / "artifacts" / "model.keras", compile=False)
    direct = network.predict(pixels, verbose=0)[0]
    assert out["probabilities"][0][0] == pytest.approx(direct.max(), abs=1e-5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\x89PNG\r\n\x1a\n broken", "row 0: 'image' is not a readable PNG or JPEG image"),
        (b"plain text", "row 0: 'image' is not a readable PNG or JPEG image"),
        ("%%%", "row 0: 'image' text is not base64"),
        (3.5, "row 0: 'image' must be PNG/JPEG bytes or base64 text, got float"),
        (
            encoded(np.zeros((9000, 5000), np.uint8), "PNG"),
            "row 0: 'image' is 5000 x 9000 pixels; the limit is 4000000 pixels",
        ),
    ],
    ids=["corrupt-png", "not-an-image", "bad-base64", "number", "too-large"],
)
def test_pyfunc_refuses_a_corrupt_image_with_a_clear_error(pyfunc_dir, value, message):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(pd.DataFrame({"image": [value]}))


def test_cli_classify_prints_the_top_classes(pyfunc_dir, tmp_path, capsys):
    rng = np.random.default_rng(6)
    (tmp_path / "green.jpg").write_bytes(encoded(colour_image(rng, "green", 40, 60), "JPEG"))
    args = ["classify", "--model", str(pyfunc_dir), "--top", "2", str(tmp_path / "green.jpg")]
    assert cli.main(args) == 0
    path, label, probability, top = capsys.readouterr().out.strip().split("\t")
    assert path.endswith("green.jpg") and label in COLOURS and 0 < float(probability) <= 1
    assert top.startswith(f"{label}:") and top.count(":") == 2
    assert cli.main(["classify", "--model", str(pyfunc_dir), str(tmp_path / "none.png")]) == 1
    assert "none.png: cannot read the image" in capsys.readouterr().err
