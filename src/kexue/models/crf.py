"""CNN + CRF Chinese word segmentation, after "简明条件随机场CRF介绍(附带纯Keras实现)".

Characters -> embedding -> a stack of 1-D convolutions -> 4 BMES tag scores -> CRF.
Trained on a gold-segmented corpus (People's Daily 1998 here); decoded with Viterbi.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, splits, stats, training
from kexue.datasets.crf import (
    Config,
    ModelConfig,
    TrainConfig,
    char_sequences,
    encode_chars,
    normalised,
    read_sentences,
)
from kexue.layers.crf import CRF
from kexue.text.segmentation import (
    BMES,
    TAG_ID,
    Jieba,
    WordScores,
    bmes_tags,
    words_from_tags,
)
from kexue.text.vocab import Vocabulary

MODEL_FILE = "model.keras"
SCORE = "f1"  # the registry's champion is the version with the best test F1
DESCRIPTION = (
    "CNN + CRF Chinese word segmenter (kexue.fm, 简明条件随机场CRF介绍), trained on "
    "gold-segmented text (`crf.corpus`; by default People's Daily, January 1998). Input: a "
    "column `text` of raw Chinese strings. Output: a column `words`, the list of words of "
    "each text."
)


def make_dataset(
    sentences: list[list[str]], vocab: Vocabulary, train: TrainConfig, seed: int, shuffle: bool
) -> tf.data.Dataset:
    """Batches of (char ids padded with 0, BMES tag ids padded with -1), grouped by length."""
    ids = tf.ragged.constant([encode_chars(vocab, "".join(s)) for s in sentences], dtype=tf.int32)
    tags = tf.ragged.constant(
        [[TAG_ID[t] for t in bmes_tags(s)] for s in sentences], dtype=tf.int32
    )
    # Slices of a ragged tensor arrive as rank-0-ragged values; the identity map turns them
    # into the plain tensors that padded batching accepts.
    dataset = tf.data.Dataset.from_tensor_slices((ids, tags)).map(
        lambda chars, tag_ids: (chars, tag_ids)
    )
    if shuffle:
        dataset = dataset.shuffle(len(sentences), seed=seed, reshuffle_each_iteration=True)
    dataset = training.bucket_batches(
        dataset,
        [sum(map(len, s)) for s in sentences],
        train.length_buckets,
        train.batch_size,
        lambda chars, _: tf.shape(chars)[0],
        padding_values=(0, -1),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


# -- model --------------------------------------------------------------------------------


def build_model(vocab_size: int, config: ModelConfig) -> keras.Model:
    chars = keras.Input(shape=(None,), dtype="int32", name="chars")
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="char_embedding")(chars)
    for i in range(config.conv_layers):
        x = keras.layers.Conv1D(
            config.conv_filters,
            config.kernel_size,
            padding="same",
            activation="relu",
            name=f"conv_{i + 1}",
        )(x)
        x = keras.layers.Dropout(config.dropout)(x)
    # Tag scores in float32: the CRF sums exponentials (mixed precision on a GPU).
    scores = keras.layers.Dense(len(BMES), dtype="float32", name="tag_scores")(x)
    crf = CRF(len(BMES), name="crf")
    return keras.Model(chars, crf(scores), name="cnn_crf_segmenter")


def crf_layer(model: keras.Model) -> CRF:
    return model.get_layer("crf")


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    """Fit on the train split, stopping early on the validation loss; the validation
    figures: the best epoch's losses and the word F1 of the kept weights."""
    strategy = training.setup(runtime)
    vocab = Vocabulary.load(vocab_file)
    sentences = read_sentences(data_dir / "train.txt")
    validation = read_sentences(data_dir / "validation.txt")
    if config.train.max_sentences is not None:
        random.Random(runtime.seed).shuffle(sentences)
        sentences = sentences[: config.train.max_sentences]
    batch = training.global_batch_size(config.train.batch_size, strategy)
    train_config = dataclasses.replace(config.train, batch_size=batch)
    with strategy.scope():
        model = build_model(len(vocab), config.model)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate), loss=crf_layer(model).loss
        )
    history = training.fit(
        model,
        make_dataset(sentences, vocab, train_config, runtime.seed, shuffle=True),
        make_dataset(validation, vocab, train_config, runtime.seed, shuffle=False),
        epochs=config.train.epochs,
        curves_path=curves_file,
        backup_dir=Path(runtime.backup_dir),
        patience=config.train.patience,
    )
    training.save_model(model, model_dir / MODEL_FILE)
    segmenter = Segmenter(model, vocab, config.train.batch_size)
    validation_counts = word_counts(validation, segmenter.segment(char_sequences(validation)))
    return {
        "train_sentences": len(sentences),
        "validation_sentences": len(validation),
        **training.best_epoch(history),
        "validation_f1": stats.figure(validation_counts, stats.f1_from_counts),
    }


# -- inference ----------------------------------------------------------------------------


_TAG_LETTERS = np.frombuffer(BMES.encode("ascii"), dtype=np.uint8)


class Segmenter:
    """Raw text in, words out. Whitespace always separates words and is not returned."""

    def __init__(self, model: keras.Model, vocab: Vocabulary, batch_size: int):
        self.vocab = vocab
        self.batch_size = batch_size
        crf = crf_layer(model)
        self._decode = tf.function(
            lambda ids: crf.decode(model(ids, training=False), ids > 0), reduce_retracing=True
        )

    @classmethod
    def load(cls, model_file: Path | str, vocab_file: Path | str, batch_size: int) -> Segmenter:
        model = keras.models.load_model(model_file, compile=False)
        return cls(model, Vocabulary.load(vocab_file), batch_size)

    def tag(self, texts: list[str]) -> list[str]:
        """BMES tags for each text (no whitespace inside), batched by length for speed."""
        lengths = np.array([len(text) for text in texts], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        tags = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            chunk_lengths = lengths[chunk]
            if chunk_lengths[-1] == 0:
                continue
            real = np.arange(chunk_lengths[-1]) < chunk_lengths[:, None]
            ids = np.zeros(real.shape, dtype=np.int32)
            ids[real] = encode_chars(self.vocab, "".join(texts[i] for i in chunk))
            paths = self._decode(tf.constant(ids)).numpy()
            chunk_tags = _TAG_LETTERS[paths[real]].tobytes().decode("ascii")
            ends = np.cumsum(chunk_lengths)
            for i, end, length in zip(chunk, ends, chunk_lengths, strict=True):
                tags[i] = chunk_tags[end - length : end]
        return tags

    def segment(self, texts: list[str]) -> list[list[str]]:
        pieces = [text.split() for text in texts]
        flat = [piece for text_pieces in pieces for piece in text_pieces]
        flat_words = iter(words_from_tags(p, t) for p, t in zip(flat, self.tag(flat), strict=True))
        return [[w for _ in text_pieces for w in next(flat_words)] for text_pieces in pieces]


def word_counts(gold: list[list[str]], predicted: Iterable[list[str]]) -> np.ndarray:
    """(sentences, 3): each sentence's (correct, predicted, gold) word counts."""
    rows = []
    for gold_words, words in zip(gold, predicted, strict=True):
        counts = WordScores()
        counts.add(gold_words, words)
        rows.append((counts.correct, counts.predicted, counts.gold))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def evaluate(
    config: Config, data_dir: Path, vocab_file: Path, model_dir: Path, plots_dir: Path
) -> tuple[dict[str, float], list[stats.Scores]]:
    """Word F1 of the model and of jieba (untrained) on the same test sentences, per
    sentence, plus precision and recall; writes the character-level F1 of each BMES tag."""
    segmenter = Segmenter.load(model_dir / MODEL_FILE, vocab_file, config.serve.batch_size)
    gold = read_sentences(data_dir / "test.txt")
    texts = char_sequences(gold)
    jieba = Jieba(hmm=config.jieba.hmm)
    systems = {
        "model": word_counts(gold, segmenter.segment(texts)),
        "jieba": word_counts(gold, (jieba.cut(text) for text in texts)),
    }
    seen = [
        normalised(s)
        for side in ("train", "validation")
        for s in read_sentences(data_dir / f"{side}.txt")
    ]
    metrics = {
        "test_sentences": len(gold),
        "test_words": int(systems["model"][:, 2].sum()),
        "test_overlap": splits.overlap(map(normalised, gold), seen),
    }
    for name, counts in systems.items():
        suffix = "" if name == "model" else f"_{name}"
        correct, predicted, actual = counts.sum(axis=0)
        metrics[f"precision{suffix}"] = float(correct / predicted) if predicted else 0.0
        metrics[f"recall{suffix}"] = float(correct / actual) if actual else 0.0
    per_tag = tag_f1("".join(bmes_tags(s) for s in gold), "".join(segmenter.tag(texts)))
    io.write_json(plots_dir / "tags.json", per_tag)
    f1 = stats.Scores(
        SCORE, systems["model"], {"jieba": systems["jieba"]}, statistic=stats.f1_from_counts
    )
    return metrics, [f1]


def tag_f1(gold_tags: str, predicted_tags: str) -> list[dict]:
    rows = []
    for tag in BMES:
        true_positive = sum(g == p == tag for g, p in zip(gold_tags, predicted_tags, strict=True))
        predicted, actual = predicted_tags.count(tag), gold_tags.count(tag)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"tag": tag, "precision": precision, "recall": recall, "f1": f1})
    return rows


# -- serving ------------------------------------------------------------------------------


class SegmenterPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a column `text` of raw strings in, a column `words` out."""

    def load_context(self, context):
        settings = context.model_config
        self.max_chars = settings["max_request_chars"]
        self.segmenter = Segmenter.load(
            context.artifacts["model"], context.artifacts["vocab"], settings["batch_size"]
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = serving.text_column(model_input, "text", self.max_chars)
        return pd.DataFrame({"words": self.segmenter.segment(texts)})


def input_example() -> pd.DataFrame:
    """A request as a client sends one, saved beside the exported model: one raw sentence."""
    return pd.DataFrame({"text": ["我们喜欢在北京的公园散步。"]})


def pyfunc(config: Config, vocab_file: Path, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    return {
        "python_model": SegmenterPyfunc(),
        "artifacts": {"model": str(model_dir / MODEL_FILE), "vocab": str(vocab_file)},
        "model_config": {
            "batch_size": config.serve.batch_size,
            "max_request_chars": config.serve.max_request_chars,
        },
        "signature": ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "text")]),
            outputs=Schema([ColSpec(Array(DataType.string), "words")]),
        ),
        "input_example": input_example(),
    }
