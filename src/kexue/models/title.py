"""Title generation with seq2seq, after "玩转Keras之seq2seq自动生成标题".

Characters of the text -> shared embedding -> bidirectional LSTM encoder; the title's
characters -> the same embedding -> LSTM decoder (started from the encoder's mean state)
with multi-head attention over the encoder states -> logits, averaged with a learned prior
toward the characters of the input (layers/copy_prior.py). Trained with teacher forcing;
titles come from beam search. The post used news articles (THUCNews); here poem -> title on
the chinese-poetry corpus, and any (text, title) corpus drops in (data/corpora.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops
from scipy.special import log_softmax

from kexue import io, serving, training
from kexue.data.corpora import TitledText, matching_files, read_titled_texts
from kexue.decoding import beam_search
from kexue.errors import DataError
from kexue.layers.copy_prior import CopyPrior
from kexue.serving import ServeConfig
from kexue.text import rouge
from kexue.text.tfidf import CharTfidf
from kexue.text.vocab import PAD, UNK, VocabConfig, Vocabulary

MODEL_FILE = "model.keras"
SCORE = "rouge_l"  # the registry's champion is the version with the best test ROUGE-L
DESCRIPTION = (
    "Seq2seq title generator: BiLSTM encoder, LSTM decoder with attention, copy prior, beam "
    "search (kexue.fm, 玩转Keras之seq2seq自动生成标题). Input: a column `text` of raw strings "
    "(a poem here). Output: a column `title`. Predict params: beam_width."
)
START, END = "<s>", "</s>"
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
NEVER_GENERATED = [PAD_ID, UNK_ID, START_ID]


@dataclass(frozen=True)
class DataConfig:
    include: list[str]
    min_text_chars: int
    max_text_chars: int
    min_title_chars: int
    max_title_chars: int
    drop_titles: list[str]
    max_per_title: int | None
    max_pairs: int | None
    test_fraction: float
    split_seed: int


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int
    hidden_dim: int
    encoder_layers: int
    attention_heads: int
    dropout: float


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    validation_fraction: float
    length_buckets: list[int]


@dataclass(frozen=True)
class DecodeConfig:
    beam_width: int
    max_beam_width: int


@dataclass(frozen=True)
class EvaluateConfig:
    first_k: int
    tfidf_orders: list[int]
    samples: int


@dataclass(frozen=True)
class Config:
    corpus: str
    data: DataConfig
    vocab: VocabConfig
    model: ModelConfig
    train: TrainConfig
    decode: DecodeConfig
    evaluate: EvaluateConfig
    serve: ServeConfig
    registered_name: str


# -- data ---------------------------------------------------------------------------------


def compact(text: str) -> str:
    """The text without white space: line breaks and spaces carry nothing in Chinese."""
    return "".join(text.split())


def clean_pairs(pairs: list[TitledText], data: DataConfig) -> list[TitledText]:
    """Compact, filter by length and placeholder titles, cut long texts, drop repeated texts,
    keep at most `max_per_title` texts of one title (a series of 300 poems is one title)."""
    kept, seen, per_title = [], set(), Counter()
    dropped_titles = set(data.drop_titles)
    for pair in pairs:
        text, title = compact(pair.text), compact(pair.title)
        if not data.min_title_chars <= len(title) <= data.max_title_chars:
            continue
        if title in dropped_titles or len(text) < data.min_text_chars:
            continue
        if data.max_per_title is not None and per_title[title] >= data.max_per_title:
            continue
        text = text[: data.max_text_chars]
        if text not in seen:
            seen.add(text)
            per_title[title] += 1
            kept.append(TitledText(text, title))
    return kept


def split_by_title(
    pairs: list[TitledText], test_fraction: float, seed: int
) -> tuple[list[TitledText], list[TitledText]]:
    """A fixed split in which all texts sharing a title fall on the same side: a series of
    poems ("…十首") or a common title must not be learnt from its own test siblings."""
    per_title = Counter(p.title for p in pairs)
    titles = sorted(per_title)
    random.Random(seed).shuffle(titles)
    n_test, counted, test_titles = max(1, round(len(pairs) * test_fraction)), 0, set()
    for title in titles:
        if counted >= n_test:
            break
        test_titles.add(title)
        counted += per_title[title]
    train = [p for p in pairs if p.title not in test_titles]
    test = [p for p in pairs if p.title in test_titles]
    return train, test


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """(text, title) pairs of the corpora -> cleaned, capped, split by title into JSONL files."""
    files = matching_files(corpora, config.data.include, "title.data.include")
    pairs = clean_pairs([p for f in files for p in read_titled_texts(f)], config.data)
    if not pairs:
        raise DataError(f"{corpora[0]}: no (text, title) pair passes the title.data filters")
    random.Random(config.data.split_seed).shuffle(pairs)
    if config.data.max_pairs is not None:
        pairs = pairs[: config.data.max_pairs]
    train, test = split_by_title(pairs, config.data.test_fraction, config.data.split_seed)
    if not train or not test:
        raise DataError(
            f"{corpora[0]}: {len(pairs)} pairs with {len({p.title for p in pairs})} titles "
            "cannot fill both splits; check title.data (test_fraction, filters)"
        )
    for split, rows in {"train": train, "test": test}.items():
        lines = [json.dumps(dataclasses.asdict(p), ensure_ascii=False) for p in rows]
        io.write_lines(out_dir / f"{split}.jsonl", lines)
    return {"files": len(files), "train_pairs": len(train), "test_pairs": len(test)}


def build_vocab(config: Config, data_dir: Path) -> Vocabulary:
    """Characters of the training texts and titles (one embedding serves both)."""
    pairs = read_titled_texts(data_dir / "train.jsonl")
    return Vocabulary.build(
        [p.text + p.title for p in pairs],
        config.vocab.min_count,
        config.vocab.max_size,
        reserved=[START, END],
    )


def check_vocab(vocab: Vocabulary, path: Path | str) -> None:
    if vocab.tokens[:4] != [PAD, UNK, START, END]:
        raise DataError(f"{path}: expected the tokens to start with {[PAD, UNK, START, END]}")


def make_dataset(
    pairs: list[TitledText], vocab: Vocabulary, train: TrainConfig, seed: int, shuffle: bool
) -> tf.data.Dataset:
    """Batches of ((text ids, START + title ids), title ids + END), 0-padded, by text length."""
    sources = tf.ragged.constant([vocab.encode(p.text) for p in pairs], dtype=tf.int32)
    targets = tf.ragged.constant(
        [[START_ID, *vocab.encode(p.title), END_ID] for p in pairs], dtype=tf.int32
    )
    dataset = tf.data.Dataset.from_tensor_slices((sources, targets)).map(
        lambda source, target: ((source, target[:-1]), target[1:])
    )
    if shuffle:
        dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    dataset = training.bucket_batches(
        dataset,
        [len(p.text) for p in pairs],
        train.length_buckets,
        train.batch_size,
        lambda inputs, _: tf.shape(inputs[0])[0],
        padding_values=((0, 0), 0),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


# -- model --------------------------------------------------------------------------------


class Encoded(NamedTuple):
    """What the decoder needs from the text; rows can be repeated or gathered per beam."""

    states: tf.Tensor  # (batch, time, hidden) encoder outputs
    mask: tf.Tensor  # (batch, time) True at real characters
    initial_h: tf.Tensor  # (batch, hidden) decoder start state
    initial_c: tf.Tensor
    source_ids: tf.Tensor  # (batch, time) for the copy prior


@keras.saving.register_keras_serializable(package="kexue")
class TitleSeq2Seq(keras.Model):
    """Inputs (text ids, START + title ids) -> logits of the next title character."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        encoder_layers: int,
        attention_heads: int,
        dropout: float,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.settings = {
            "vocab_size": vocab_size,
            "embedding_dim": embedding_dim,
            "hidden_dim": hidden_dim,
            "encoder_layers": encoder_layers,
            "attention_heads": attention_heads,
            "dropout": dropout,
        }
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="char_embedding")
        self.encoders = [
            keras.layers.Bidirectional(
                # Half the width each way: the encoder states are as wide as the decoder's.
                keras.layers.LSTM(max(1, hidden_dim // 2), return_sequences=True),
                name=f"encoder_{i + 1}",
            )
            for i in range(encoder_layers)
        ]
        self.initial_state = keras.layers.Dense(2 * hidden_dim, activation="tanh", name="start")
        self.decoder = keras.layers.LSTM(hidden_dim, return_sequences=True, name="decoder")
        self.attention = keras.layers.MultiHeadAttention(
            attention_heads, max(1, hidden_dim // attention_heads), name="attention"
        )
        self.dropout = keras.layers.Dropout(dropout)
        self.hidden = keras.layers.Dense(embedding_dim, activation="relu", name="output_hidden")
        # Logits in float32: they feed a softmax (mixed precision on a GPU).
        self.to_logits = keras.layers.Dense(vocab_size, dtype="float32", name="logits")
        self.copy_prior = CopyPrior(vocab_size, name="copy_prior")

    def encode(self, source_ids, training=None) -> Encoded:
        mask = ops.not_equal(source_ids, PAD_ID)
        states = self.embedding(source_ids)
        for encoder in self.encoders:
            states = encoder(states, mask=mask, training=training)
        weights = ops.expand_dims(ops.cast(mask, states.dtype), -1)
        mean = ops.sum(states * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        initial_h, initial_c = ops.split(self.initial_state(mean), 2, axis=-1)
        return Encoded(states, mask, initial_h, initial_c, source_ids)

    def decode(self, target_ids, encoded: Encoded, training=None, last_only: bool = False):
        """Logits for each position of the title so far (only the last with `last_only`)."""
        decoded = self.decoder(
            self.embedding(target_ids),
            initial_state=[encoded.initial_h, encoded.initial_c],
            training=training,
        )
        attention_mask = ops.repeat(
            ops.expand_dims(encoded.mask, 1), ops.shape(target_ids)[1], axis=1
        )
        attended = self.attention(
            decoded, encoded.states, attention_mask=attention_mask, training=training
        )
        features = ops.concatenate([decoded, attended], axis=-1)
        if last_only:
            features = features[:, -1]
        features = self.hidden(self.dropout(features, training=training))
        return self.copy_prior([self.to_logits(features), encoded.source_ids])

    def call(self, inputs, training=None):
        source_ids, target_ids = inputs
        return self.decode(target_ids, self.encode(source_ids, training), training)

    def build_from_config(self, config):
        # Weights exist only once the model has run: run it on one tiny dummy pair.
        self((np.ones((1, 1), dtype="int32"), np.ones((1, 1), dtype="int32")))

    def get_config(self):
        return {**super().get_config(), **self.settings}


def build_model(vocab_size: int, config: ModelConfig) -> TitleSeq2Seq:
    model = TitleSeq2Seq(vocab_size, **dataclasses.asdict(config), name="title_seq2seq")
    model.build_from_config({})
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
    vocab = Vocabulary.load(vocab_file)
    check_vocab(vocab, vocab_file)
    pairs = read_titled_texts(data_dir / "train.jsonl")
    random.Random(runtime.seed).shuffle(pairs)
    validation, pairs = training.hold_out(pairs, config.train.validation_fraction)
    batch = training.global_batch_size(config.train.batch_size, strategy)
    train_config = dataclasses.replace(config.train, batch_size=batch)
    with strategy.scope():
        model = build_model(len(vocab), config.model)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate),
            # Padding after the end token is not part of the title.
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
        )
    history = training.fit(
        model,
        make_dataset(pairs, vocab, train_config, runtime.seed, shuffle=True),
        make_dataset(validation, vocab, train_config, runtime.seed, shuffle=False),
        epochs=config.train.epochs,
        curves_path=curves_file,
        backup_dir=Path(runtime.backup_dir),
    )
    training.save_model(model, model_dir / MODEL_FILE)
    return {
        "train_pairs": len(pairs),
        "final_loss": history.history["loss"][-1],
        "final_val_loss": history.history["val_loss"][-1],
    }


# -- inference ----------------------------------------------------------------------------


class TitleGenerator:
    """Raw texts in, titles out (beam search); an empty text gets an empty title."""

    def __init__(
        self, model: TitleSeq2Seq, vocab: Vocabulary, max_text_chars: int, max_title_chars: int
    ):
        self.vocab, self.model = vocab, model
        self.max_text_chars, self.max_title_chars = max_text_chars, max_title_chars
        self._encode = tf.function(model.encode, reduce_retracing=True, autograph=False)
        self._next_logits = tf.function(
            lambda prefixes, encoded: model.decode(prefixes, encoded, last_only=True),
            reduce_retracing=True,
            autograph=False,
        )

    @classmethod
    def load(
        cls,
        model_file: Path | str,
        vocab_file: Path | str,
        max_text_chars: int,
        max_title_chars: int,
    ) -> TitleGenerator:
        vocab = Vocabulary.load(vocab_file)
        check_vocab(vocab, vocab_file)
        model = keras.models.load_model(model_file, compile=False)
        return cls(model, vocab, max_text_chars, max_title_chars)

    def generate(self, texts: list[str], beam_width: int, batch_size: int) -> list[str]:
        """Titles of `texts`, decoded `batch_size` texts at a time (sorted by length)."""
        texts = [compact(t)[: self.max_text_chars] for t in texts]
        order = sorted((i for i, t in enumerate(texts) if t), key=lambda i: len(texts[i]))
        titles = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            chunk_titles = self._generate([texts[i] for i in chunk], beam_width)
            for i, chunk_title in zip(chunk, chunk_titles, strict=True):
                titles[i] = chunk_title
        return titles

    def _generate(self, texts: list[str], beam_width: int) -> list[str]:
        ids = np.zeros((len(texts), max(map(len, texts))), dtype=np.int32)
        for row, text in enumerate(texts):
            ids[row, : len(text)] = self.vocab.encode(text)
        encoded = Encoded(*(ops.repeat(t, beam_width, axis=0) for t in self._encode(ids)))

        def next_log_probs(prefixes: np.ndarray, items: np.ndarray) -> np.ndarray:
            rows = (items[:, None] * beam_width + np.arange(beam_width)).ravel()
            beams = Encoded(*(tf.gather(t, rows) for t in encoded))
            logits = self._next_logits(tf.constant(prefixes), beams).numpy()
            logits[:, NEVER_GENERATED] = -np.inf
            return log_softmax(logits, axis=-1)

        hypotheses = beam_search(
            next_log_probs, len(texts), beam_width, START_ID, END_ID, self.max_title_chars
        )
        return ["".join(self.vocab.tokens[t] for t in h.tokens) for h in hypotheses]


def load_generator(config: Config, model_dir: Path, vocab_file: Path) -> TitleGenerator:
    return TitleGenerator.load(
        model_dir / MODEL_FILE, vocab_file, config.data.max_text_chars, config.data.max_title_chars
    )


def evaluate(
    config: Config, data_dir: Path, vocab_file: Path, model_dir: Path, plots_dir: Path
) -> dict[str, float]:
    """ROUGE-1/2/L and exact match of beam search, of greedy decoding and of two baselines
    (the nearest training text's title by TF-IDF, the text's first k characters); writes the
    systems' scores as a plot and sample titles."""
    generator = load_generator(config, model_dir, vocab_file)
    test = read_titled_texts(data_dir / "test.jsonl")
    train_pairs = read_titled_texts(data_dir / "train.jsonl")
    texts, titles = [p.text for p in test], [p.title for p in test]
    started = time.perf_counter()
    generated = generator.generate(texts, config.decode.beam_width, config.serve.batch_size)
    seconds = time.perf_counter() - started
    greedy = generator.generate(texts, 1, config.serve.batch_size)
    nearest = CharTfidf([p.text for p in train_pairs], config.evaluate.tfidf_orders).nearest(texts)
    systems = {
        "": generated,
        "greedy_": greedy,
        "nn_": [train_pairs[i].title for i in nearest],
        "firstk_": [text[: config.evaluate.first_k] for text in texts],
    }
    metrics = {}
    for prefix, candidates in systems.items():
        metrics.update(rouge.mean_scores(titles, candidates, prefix))
    metrics.update(
        test_pairs=len(test),
        beam_width=config.decode.beam_width,
        mean_title_chars=float(np.mean([len(t) for t in generated])),
        titles_per_second=len(test) / seconds,
    )
    io.write_json(plots_dir / "systems.json", system_rows(metrics, config))
    samples = [
        {"text": t.text, "title": t.title, "generated": g, "nearest_title": n}
        for t, g, n in zip(test, generated, systems["nn_"], strict=True)
    ][: config.evaluate.samples]
    io.write_json(plots_dir / "samples.json", samples)
    return metrics


def system_rows(metrics: dict[str, float], config: Config) -> list[dict]:
    """One row per system with its ROUGE F-measures, for a bar chart."""
    names = {
        "": f"seq2seq, beam {config.decode.beam_width}",
        "greedy_": "seq2seq, greedy",
        "nn_": "nearest training title (TF-IDF)",
        "firstk_": f"first {config.evaluate.first_k} characters",
    }
    return [
        {"system": name, **{m: metrics[f"{prefix}{m}"] for m in ("rouge_1", "rouge_2", "rouge_l")}}
        for prefix, name in names.items()
    ]


# -- serving ------------------------------------------------------------------------------


class TitlePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a column `text` in, a column `title` out; params: beam_width."""

    def load_context(self, context):
        settings = context.model_config
        self.settings = settings
        self.generator = TitleGenerator.load(
            context.artifacts["model"],
            context.artifacts["vocab"],
            settings["max_text_chars"],
            settings["max_title_chars"],
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = serving.text_column(model_input, "text", self.settings["max_request_chars"])
        beam_width = serving.int_param(
            params, "beam_width", self.settings["beam_width"], self.settings["max_beam_width"]
        )
        titles = self.generator.generate(texts, beam_width, self.settings["batch_size"])
        return pd.DataFrame({"title": titles})


def pyfunc(config: Config, vocab_file: Path, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return {
        "python_model": TitlePyfunc(),
        "artifacts": {"model": str(model_dir / MODEL_FILE), "vocab": str(vocab_file)},
        "model_config": {
            "batch_size": config.serve.batch_size,
            "max_request_chars": config.serve.max_request_chars,
            "beam_width": config.decode.beam_width,
            "max_beam_width": config.decode.max_beam_width,
            "max_text_chars": config.data.max_text_chars,
            "max_title_chars": config.data.max_title_chars,
        },
        "signature": ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "text")]),
            outputs=Schema([ColSpec(DataType.string, "title")]),
            params=ParamSchema([ParamSpec("beam_width", DataType.long, config.decode.beam_width)]),
        ),
    }
