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
import time
from pathlib import Path
from typing import NamedTuple

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops
from scipy.special import log_softmax

from kexue import io, serving, splits, stats, training
from kexue.data.corpora import TitledText, read_titled_texts
from kexue.datasets.title import (
    Config,
    ModelConfig,
    TrainConfig,
    check_vocab,
    model_text,
)
from kexue.decoding import beam_search
from kexue.layers.copy_prior import CopyPrior
from kexue.text import rouge
from kexue.text.tfidf import CharTfidf
from kexue.text.vocab import Vocabulary

MODEL_FILE = "model.keras"
SCORE = "rouge_l"  # the registry's champion is the version with the best test ROUGE-L
DESCRIPTION = (
    "Seq2seq title generator: BiLSTM encoder, LSTM decoder with attention, copy prior, beam "
    "search (kexue.fm, 玩转Keras之seq2seq自动生成标题), trained on Tang poems and their "
    "titles (`title.corpus`; the post: news). Input: a column `text` of raw strings (a poem "
    "here). Output: a column `title`. Predict params: beam_width."
)
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
NEVER_GENERATED = [PAD_ID, UNK_ID, START_ID]


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
    """Fit on the train split, stopping early on the validation loss, then decode the
    validation texts at each candidate beam width; the validation figures of both choices."""
    strategy = training.setup(runtime)
    vocab = Vocabulary.load(vocab_file)
    check_vocab(vocab, vocab_file)
    pairs = read_titled_texts(data_dir / "train.jsonl")
    validation = read_titled_texts(data_dir / "validation.jsonl")
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
        patience=config.train.patience,
    )
    training.save_model(model, model_dir / MODEL_FILE)
    generator = TitleGenerator(
        model, vocab, config.data.max_text_chars, config.data.max_title_chars
    )
    return {
        "train_pairs": len(pairs),
        "validation_pairs": len(validation),
        **training.best_epoch(history),
        **beam_widths_on(generator, validation, config.decode.candidate_widths, batch),
    }


def beam_widths_on(
    generator: TitleGenerator, pairs: list[TitledText], widths: list[int], batch_size: int
) -> dict[str, float]:
    """Mean ROUGE-L of the titles decoded at each beam width (`validation_rouge_l_beam_<k>`)
    and the best width (`validation_best_beam_width`; the narrower on a tie)."""
    texts, titles = [p.text for p in pairs], [p.title for p in pairs]
    figures = {
        width: float(
            np.mean(rouge_items(titles, generator.generate(texts, width, batch_size))["rouge_l"])
        )
        for width in sorted(set(widths))
    }
    best = max(figures, key=lambda width: (figures[width], -width))
    return {
        **{f"validation_rouge_l_beam_{width}": figure for width, figure in figures.items()},
        "validation_best_beam_width": best,
    }


# -- inference ----------------------------------------------------------------------------


def encoded_spec(model: TitleSeq2Seq) -> Encoded:
    """The shapes of any batch's `Encoded`: every axis free but the features' (the last axis
    of the float tensors), taken from one encoded character."""
    probe = model.encode(tf.zeros((1, 1), tf.int32))
    return Encoded(
        *(
            tf.TensorSpec(
                [None] * (t.shape.rank - 1) + ([t.shape[-1]] if t.dtype.is_floating else [None]),
                t.dtype,
            )
            for t in probe
        )
    )


class TitleGenerator:
    """Raw texts in, titles out (beam search); an empty text gets an empty title."""

    def __init__(
        self, model: TitleSeq2Seq, vocab: Vocabulary, max_text_chars: int, max_title_chars: int
    ):
        self.vocab, self.model = vocab, model
        self.max_text_chars, self.max_title_chars = max_text_chars, max_title_chars
        # Each decoding step is one graph call: gathering the live beams' encoder states
        # inside the graph saves an eager op a state a step (most of a short request's time).
        # Traced once, for any number of texts, beams and characters: a request of a new
        # shape would otherwise wait for a new trace.
        ids = tf.TensorSpec([None, None], tf.int32)
        self._encode = tf.function(
            lambda ids, beam_width: Encoded(
                *(tf.repeat(t, beam_width, axis=0) for t in model.encode(ids))
            ),
            input_signature=[ids, tf.TensorSpec([], tf.int32)],
            autograph=False,
        )
        self._next_logits = tf.function(
            lambda prefixes, encoded, rows: model.decode(
                prefixes, Encoded(*(tf.gather(t, rows) for t in encoded)), last_only=True
            ),
            input_signature=[ids, encoded_spec(model), tf.TensorSpec([None], tf.int64)],
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
        texts = [model_text(t, self.max_text_chars) for t in texts]
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
        encoded = self._encode(tf.constant(ids), tf.constant(beam_width))

        def next_log_probs(prefixes: np.ndarray, items: np.ndarray) -> np.ndarray:
            rows = (items[:, None] * beam_width + np.arange(beam_width)).ravel()
            logits = self._next_logits(tf.constant(prefixes), encoded, tf.constant(rows)).numpy()
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


def rouge_items(references: list[str], candidates: list[str]) -> dict[str, np.ndarray]:
    """Per-item ROUGE-L, ROUGE-2 and ROUGE-1 F-measures of candidates against references."""
    pairs = list(zip(references, candidates, strict=True))
    return {
        "rouge_l": np.array([rouge.rouge_l(r, c) for r, c in pairs]),
        "rouge_2": np.array([rouge.rouge_n(r, c, 2) for r, c in pairs]),
        "rouge_1": np.array([rouge.rouge_n(r, c, 1) for r, c in pairs]),
    }


def evaluate(
    config: Config, data_dir: Path, vocab_file: Path, model_dir: Path, plots_dir: Path
) -> tuple[dict[str, float], list[stats.Scores]]:
    """Per-title ROUGE-L (the headline), ROUGE-2 and ROUGE-1 of the model at the chosen beam
    width, of greedy decoding (when the width is not 1) and of two untrained baselines: the
    nearest training text's title by TF-IDF, the text's first k characters. Writes the
    systems' figures as a plot and sample titles."""
    generator = load_generator(config, model_dir, vocab_file)
    test = read_titled_texts(data_dir / "test.jsonl")
    train_pairs = read_titled_texts(data_dir / "train.jsonl")
    seen = train_pairs + read_titled_texts(data_dir / "validation.jsonl")
    texts, titles = [p.text for p in test], [p.title for p in test]
    started = time.perf_counter()
    generated = generator.generate(texts, config.decode.beam_width, config.serve.batch_size)
    seconds = time.perf_counter() - started
    nearest = CharTfidf([p.text for p in train_pairs], config.evaluate.tfidf_orders).nearest(texts)
    baselines = {
        "nearest_title": [train_pairs[i].title for i in nearest],
        "first_k": [text[: config.evaluate.first_k] for text in texts],
    }
    if config.decode.beam_width != 1:
        baselines["greedy"] = generator.generate(texts, 1, config.serve.batch_size)
    model_items = rouge_items(titles, generated)
    baseline_items = {name: rouge_items(titles, made) for name, made in baselines.items()}
    scores = [
        stats.Scores(
            metric, values, {name: items[metric] for name, items in baseline_items.items()}
        )
        for metric, values in model_items.items()
    ]
    max_chars = config.data.max_text_chars
    seen_texts = [model_text(p.text, max_chars) for p in seen]
    metrics = {
        "test_pairs": len(test),
        "test_overlap": splits.overlap([model_text(t, max_chars) for t in texts], seen_texts),
        "beam_width": config.decode.beam_width,
        "exact": float(np.mean([g == t for g, t in zip(generated, titles, strict=True)])),
        "mean_title_chars": float(np.mean([len(t) for t in generated])),
        "titles_per_second": len(test) / seconds,
    }
    io.write_json(plots_dir / "systems.json", system_rows(scores, config))
    samples = [
        {"text": t.text, "title": t.title, "generated": g, "nearest_title": n}
        for t, g, n in zip(test, generated, baselines["nearest_title"], strict=True)
    ][: config.evaluate.samples]
    io.write_json(plots_dir / "samples.json", samples)
    return metrics, scores


def system_rows(scores: list[stats.Scores], config: Config) -> list[dict]:
    """One row per system with its mean ROUGE F-measures, for a bar chart."""
    names = {
        "model": f"seq2seq, beam {config.decode.beam_width}",
        "greedy": "seq2seq, greedy",
        "nearest_title": "nearest training title (TF-IDF)",
        "first_k": f"first {config.evaluate.first_k} characters",
    }
    rows = {}
    for score in sorted(scores, key=lambda score: score.metric):
        for system, values in {"model": score.model, **score.baselines}.items():
            rows.setdefault(system, {"system": names[system]})[score.metric] = stats.figure(values)
    return list(rows.values())


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
        beams, max_beams = len(texts) * beam_width, self.settings["max_beams"]
        if beams > max_beams:
            raise serving.bad_request(
                f"{len(texts)} texts x beam_width {beam_width} = {beams} beams; "
                f"the limit per request is {max_beams}"
            )
        titles = self.generator.generate(texts, beam_width, self.settings["batch_size"])
        return pd.DataFrame({"title": titles})


def input_example(config: Config) -> tuple[pd.DataFrame, dict]:
    """A request as a client sends one, saved beside the exported model: a poem to title
    (traditional characters, as the corpus), with the served beam width."""
    return (
        pd.DataFrame({"text": ["床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"]}),
        {"beam_width": config.decode.beam_width},
    )


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
            "max_beams": config.serve.max_beams,
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
        "input_example": input_example(config),
    }
