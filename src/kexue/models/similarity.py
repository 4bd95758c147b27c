"""Sentence similarity: GRU encoder + AM-Softmax, after "基于GRU和AM-Softmax的句子相似度模型".

Characters -> embedding -> GRU -> L2-normalised vector: the encoder. It is trained as a
classifier over groups of texts that mean the same (each group a class) with AM-Softmax
(layers/margin.py), then used without the classifier: two texts are similar when the cosine
of their vectors is high, also for texts and groups never seen in training. The post used
private groups of similar questions; here the synonym groups of HIT Tongyici Cilin, or your
own groups, one text a line with its group's id (`data.format: groups`, data/cilin.py).

Evaluation is retrieval. Groups with 3+ members lend one member each to validation or to
test (prepare), chosen among the members no other group lists, so a held-out text is in no
training group. Each held-out member is a query; the gallery is every distinct training
phrase. A query is a hit at k when one of its k nearest gallery phrases by cosine is a
training member of the query's group. Validation queries stop the training and choose the
scale `s`; test queries are read only by evaluate. The baseline (baseline_similarity) is the
same encoder trained with a plain softmax classifier on the same splits and budget.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from kexue import io, serving, splits, stats, training
from kexue.datasets.similarity import (
    PHRASES_FILE,
    Config,
    Member,
    ModelConfig,
    char_ids,
    group_index,
    read_members,
)
from kexue.layers.margin import AMSoftmax, AMSoftmaxLoss
from kexue.text.vocab import Vocabulary

MODEL_FILE = "model.keras"
SCORE = "top1"  # the registry's champion is the version with the best top-1 retrieval accuracy
DESCRIPTION = (
    "GRU sentence encoder trained with AM-Softmax on the synonym groups of HIT Tongyici Cilin "
    "(kexue.fm, 基于GRU和AM-Softmax的句子相似度模型). Input: a column `text` -> a column "
    "`vector` (unit vectors), "
    "or a column `query` with an optional column `candidates` (lists of strings) -> columns "
    "`ranked` and `scores` (cosines, best first; without candidates, the top_k known phrases)."
)
Head = Literal["am_softmax", "softmax"]


def make_dataset(
    members: list[Member], vocab: Vocabulary, index: dict[str, int], batch: int, seed: int | None
) -> tf.data.Dataset:
    """Batches of (character ids, class id), shuffled with `seed` (None: in file order).

    Each batch is padded to its own longest phrase, not the corpus' longest: the GRU runs as
    many steps as the batch is wide (masked or not), and most phrases are 2 characters.
    """
    chars = tf.ragged.constant([vocab.encode(m.text) for m in members], dtype=tf.int32)
    classes = np.array([index[m.group] for m in members], dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((chars, classes)).map(
        lambda text, group: (text, group)  # rank-0 ragged slices -> plain tensors
    )
    if seed is not None:
        dataset = dataset.shuffle(len(members), seed=seed, reshuffle_each_iteration=True)
    return dataset.padded_batch(batch).prefetch(tf.data.AUTOTUNE)


# -- model --------------------------------------------------------------------------------


def build_encoder(vocab_size: int, config: ModelConfig) -> keras.Model:
    chars = keras.Input(shape=(None,), dtype="int32", name="chars")
    x = keras.layers.Embedding(
        vocab_size, config.embedding_dim, mask_zero=True, name="char_embedding"
    )(chars)
    x = keras.layers.GRU(config.hidden_dim, name="gru")(x)
    # Float32 unit vectors: cosines are plain dot products, also under mixed precision.
    vector = keras.layers.UnitNormalization(dtype="float32", name="unit_vector")(x)
    return keras.Model(chars, vector, name="encoder")


def build_classifier(vocab_size: int, num_classes: int, config: Config, head: Head):
    """The encoder plus a classifier over groups: AM-Softmax (the post) or a plain softmax
    (the baseline). Returns (model, its loss)."""
    encoder = build_encoder(vocab_size, config.model)
    chars = keras.Input(shape=(None,), dtype="int32", name="chars")
    if head == "am_softmax":
        outputs = AMSoftmax(num_classes, name="cosines")(encoder(chars))
        loss = AMSoftmaxLoss(config.loss.scale, config.loss.margin)
    else:
        outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(encoder(chars))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.Model(chars, outputs, name=f"gru_{head}"), loss


def fit_classifier(
    head: Head,
    config: Config,
    strategy: tf.distribute.Strategy,
    seed: int,
    members: dict[str, list[Member]],
    vocab: Vocabulary,
    curves_file: Path,
    backup_dir: Path,
) -> tuple[keras.Model, dict[str, float]]:
    """(encoder + head, the validation figures of its best epoch): trained on the training
    members' groups until the loss on the validation members stops falling."""
    keras.utils.set_random_seed(seed)
    batch = training.global_batch_size(config.train.batch_size, strategy)
    index = group_index(members["train"])
    with strategy.scope():
        model, loss = build_classifier(len(vocab), len(index), config, head)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate),
            loss=loss,
            # The argmax of the cosines is the predicted group, as for logits.
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    history = training.fit(
        model,
        make_dataset(members["train"], vocab, index, batch, seed),
        make_dataset(members["validation"], vocab, index, batch, None),
        config.train.epochs,
        curves_file,
        backup_dir,
        patience=config.train.patience,
    )
    return model, training.best_epoch(history)


def read_training_splits(data_dir: Path) -> dict[str, list[Member]]:
    return {side: read_members(data_dir / f"{side}.tsv") for side in ("train", "validation")}


def validation_retrieval(
    config: Config, model: keras.Model, vocab: Vocabulary, members: dict[str, list[Member]]
) -> dict[str, float]:
    """`val_top<k>`: retrieval of the validation queries among the training phrases."""
    encoder = Encoder(model.get_layer("encoder"), vocab, config.serve.batch_size)
    ranks = retrieval_ranks(
        encoder, members["train"], members["validation"], max(config.evaluate.top_k)
    )
    return {f"val_top{k}": top_k_accuracy(ranks, k) for k in config.evaluate.top_k}


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    strategy = training.setup(runtime)
    members = read_training_splits(data_dir)
    vocab = Vocabulary.load(vocab_file)
    model, chosen = fit_classifier(
        "am_softmax",
        config,
        strategy,
        runtime.seed,
        members,
        vocab,
        curves_file,
        Path(runtime.backup_dir),
    )
    training.save_model(model, model_dir / MODEL_FILE)
    # The known phrases ship with the model: the pyfunc ranks them for bare queries.
    with io.atomic_path(model_dir / PHRASES_FILE) as tmp:
        shutil.copyfile(data_dir / PHRASES_FILE, tmp)
    return {
        "train_members": len(members["train"]),
        "validation_queries": len(members["validation"]),
        "groups": len(group_index(members["train"])),
        **chosen,
        **validation_retrieval(config, model, vocab, members),
    }


def train_baselines(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    baselines_dir: Path,
    curves_dir: Path,
) -> dict[str, float]:
    """The same encoder with a plain softmax head, fitted like the model (same splits, most
    epochs and early stopping): `softmax.keras`, `softmax.csv`, its validation figures."""
    strategy = training.setup(runtime)
    members = read_training_splits(data_dir)
    vocab = Vocabulary.load(vocab_file)
    model, chosen = fit_classifier(
        "softmax",
        config,
        strategy,
        runtime.seed,
        members,
        vocab,
        curves_dir / "softmax.csv",
        Path(runtime.backup_dir) / "softmax",
    )
    training.save_model(model, baselines_dir / "softmax.keras")
    figures = {**chosen, **validation_retrieval(config, model, vocab, members)}
    return {f"softmax_{name}": value for name, value in figures.items()}


# -- retrieval ----------------------------------------------------------------------------


class Encoder:
    """Raw texts in, unit vectors out (an empty text gets the zero vector)."""

    def __init__(self, encoder: keras.Model, vocab: Vocabulary, batch_size: int):
        self.vocab, self.batch_size = vocab, batch_size
        self._encode = tf.function(lambda ids: encoder(ids, training=False), reduce_retracing=True)

    @classmethod
    def load(cls, model_file: Path | str, vocab_file: Path | str, batch_size: int) -> Encoder:
        model = keras.models.load_model(model_file, compile=False)
        return cls(model.get_layer("encoder"), Vocabulary.load(vocab_file), batch_size)

    def vectors(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, encoded in batches of similar length."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        parts = [self._encode(char_ids([texts[i] for i in c], self.vocab)).numpy() for c in chunks]
        vectors = np.zeros((len(texts), parts[0].shape[1] if parts else 0), dtype=np.float32)
        for chunk, part in zip(chunks, parts, strict=True):
            vectors[chunk] = part
        return vectors


@dataclass(frozen=True)
class Gallery:
    """The distinct training phrases, each with the groups it is a training member of."""

    texts: list[str]
    groups: list[frozenset[str]]

    @classmethod
    def of(cls, members: list[Member]) -> Gallery:
        groups: dict[str, set[str]] = defaultdict(set)
        for member in members:
            groups[member.text].add(member.group)
        return cls(list(groups), [frozenset(g) for g in groups.values()])


def first_hit_ranks(
    queries: list[Member],
    query_vectors: np.ndarray,
    gallery: Gallery,
    gallery_vectors: np.ndarray,
    max_k: int,
    chunk_size: int = 512,
) -> np.ndarray:
    """For each query, the rank (1 = nearest) of its nearest gallery phrase from the query's
    group among the max_k nearest by cosine, or 0 when none is. The query's own text is never
    its own neighbour (prepared queries are in no training group; a served one may be);
    equal cosines rank by gallery order."""
    position = {text: i for i, text in enumerate(gallery.texts)}
    ranks = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        scores = query_vectors[start : start + len(chunk)] @ gallery_vectors.T
        for row, query in enumerate(chunk):
            if query.text in position:
                scores[row, position[query.text]] = -np.inf
        for row, nearest in enumerate(top_indices(scores, max_k)):
            hits = [j for j, g in enumerate(nearest) if chunk[row].group in gallery.groups[g]]
            ranks[start + row] = hits[0] + 1 if hits else 0
    return ranks


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, best first, ties by lower index."""
    k = min(k, scores.shape[1])
    candidates = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
    # A stable sort of the index-sorted candidates keeps the lower index first among equals.
    order = np.argsort(-np.take_along_axis(scores, candidates, axis=1), axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def top_k_accuracy(ranks: np.ndarray, k: int) -> float:
    """The fraction of queries with a hit among their k nearest."""
    return float(np.mean(hits(ranks, k))) if len(ranks) else 0.0


def retrieval_ranks(
    encoder: Encoder, train: list[Member], test: list[Member], max_k: int
) -> np.ndarray:
    gallery = Gallery.of(train)
    return first_hit_ranks(
        test,
        encoder.vectors([m.text for m in test]),
        gallery,
        encoder.vectors(gallery.texts),
        max_k,
    )


def evaluate(
    config: Config,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    plots_dir: Path,
    baselines_dir: Path | None = None,
) -> tuple[dict[str, float], list[stats.Scores]]:
    """Per-query hits at each k (`top<k>`) of the AM-Softmax encoder and of the softmax
    baseline (the encoder alone without `baselines_dir`) on the test queries; the accuracy
    at every k up to the largest as a plot."""
    seen = read_training_splits(data_dir)
    test = read_members(data_dir / "test.tsv")
    max_k = max(config.evaluate.top_k)
    batch = config.serve.batch_size
    systems = {"am_softmax": model_dir / MODEL_FILE}
    if baselines_dir is not None:
        systems["softmax"] = baselines_dir / "softmax.keras"
    ranks = {
        system: retrieval_ranks(Encoder.load(file, vocab_file, batch), seen["train"], test, max_k)
        for system, file in systems.items()
    }
    curve = [
        {"k": k, **{system: top_k_accuracy(r, k) for system, r in ranks.items()}}
        for k in range(1, max_k + 1)
    ]
    io.write_json(plots_dir / "topk.json", curve)
    scores = [
        stats.Scores(
            f"top{k}",
            hits(ranks["am_softmax"], k),
            {system: hits(r, k) for system, r in ranks.items() if system != "am_softmax"},
        )
        for k in config.evaluate.top_k
    ]
    held_in = [m.text for side in seen.values() for m in side]
    metrics = {
        "groups": len(group_index(seen["train"])),
        "train_members": len(seen["train"]),
        "gallery_phrases": len(Gallery.of(seen["train"]).texts),
        "test_queries": len(test),
        "test_overlap": splits.overlap((m.text for m in test), held_in),
    }
    return metrics, scores


def hits(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 for each query with a hit among its k nearest, else 0.0."""
    return ((ranks > 0) & (ranks <= k)).astype(np.float64)


# -- serving ------------------------------------------------------------------------------


def ranked_by_cosine(
    query: np.ndarray, texts: list[str], vectors: np.ndarray, top_k: int | None = None
) -> tuple[list[str], list[float]]:
    """`texts` sorted by the cosine of their vectors with `query`, best first."""
    scores = vectors @ query
    order = top_indices(scores[None, :], top_k or len(texts))[0] if len(texts) else []
    return [texts[i] for i in order], [float(scores[i]) for i in order]


class SimilarityPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc with two modes, chosen by the input's columns:

    `text`                            -> `vector`: the unit vector of each text
    `query` (+ optional `candidates`) -> `ranked`, `scores`: the candidates by cosine, best
                                         first; without candidates, the top_k known phrases
                                         (the query's own text left out)
    """

    def load_context(self, context):
        self.settings = context.model_config
        self.max_chars = self.settings["max_request_chars"]
        self.encoder = Encoder.load(
            context.artifacts["model"], context.artifacts["vocab"], self.settings["batch_size"]
        )
        self.phrases_file = context.artifacts["phrases"]
        self._known: tuple[list[str], np.ndarray] | None = None

    def known_phrases(self) -> tuple[list[str], np.ndarray]:
        """The known phrases and their vectors, encoded on first use (seconds)."""
        if self._known is None:
            phrases = io.read_lines(self.phrases_file)
            self._known = phrases, self.encoder.vectors(phrases)
        return self._known

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # MLflow drops columns the signature does not name before they arrive here.
        columns = set(model_input.columns) if isinstance(model_input, pd.DataFrame) else set()
        if {"text", "query"} <= columns:
            raise serving.bad_request("give a column 'text' or a column 'query', not both")
        if "text" in columns:
            texts = self.rows(serving.text_column(model_input, "text", self.max_chars), "texts")
            return pd.DataFrame({"vector": [v.tolist() for v in self.encoder.vectors(texts)]})
        if "query" in columns:
            return self.rank(
                model_input,
                serving.int_param(
                    params, "top_k", self.settings["top_k"], self.settings["max_top_k"]
                ),
            )
        raise serving.bad_request(
            "expected a column 'text' (-> vector) or a column 'query' with an optional column "
            "'candidates' (-> ranked, scores); the input has neither"
        )

    def rows(self, items: list, what: str) -> list:
        """`items`, refused (HTTP 400) when there are more than the model's `max_rows`."""
        limit = self.settings["max_rows"]
        if len(items) > limit:
            raise serving.bad_request(
                f"input has {len(items)} {what}; the limit per request is {limit}"
            )
        return items

    def rank(self, model_input: pd.DataFrame, top_k: int) -> pd.DataFrame:
        queries = self.rows(serving.text_column(model_input, "query", self.max_chars), "queries")
        query_vectors = self.encoder.vectors(queries)
        if "candidates" not in model_input.columns:
            phrases, vectors = self.known_phrases()
            rows = [
                ranked_by_cosine(q, *_without(phrases, vectors, text), top_k)
                for q, text in zip(query_vectors, queries, strict=True)
            ]
        else:
            lists = candidate_lists(model_input["candidates"], self.max_chars)
            self.rows([c for candidates in lists for c in candidates], "candidates")
            vectors = self.encoder.vectors([c for candidates in lists for c in candidates])
            ends = np.cumsum([len(c) for c in lists])
            rows = [
                ranked_by_cosine(q, candidates, vectors[end - len(candidates) : end])
                for q, candidates, end in zip(query_vectors, lists, ends, strict=True)
            ]
        return pd.DataFrame({"ranked": [r for r, _ in rows], "scores": [s for _, s in rows]})


def _without(phrases: list[str], vectors: np.ndarray, text: str) -> tuple[list[str], np.ndarray]:
    if text not in phrases:
        return phrases, vectors
    keep = [i for i, phrase in enumerate(phrases) if phrase != text]
    return [phrases[i] for i in keep], vectors[keep]


def candidate_lists(column: pd.Series, max_chars: int) -> list[list[str]]:
    """Each row's candidates as a list of strings; a bad row is a 400 naming it."""
    lists = []
    for row, value in enumerate(column.tolist()):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
            raise serving.bad_request(
                f"row {row}: 'candidates' must be a list of strings, got {value!r:.60}"
            )
        lists.append(list(value))
    total = sum(len(c) for candidates in lists for c in candidates)
    if total > max_chars:
        raise serving.bad_request(
            f"candidates have {total} characters; the limit per request is {max_chars}"
        )
    return lists


def input_example(config: Config) -> tuple[pd.DataFrame, dict]:
    """A request as a client sends one, saved beside the exported model: a word ranking its
    candidate synonyms (not the known phrases, which would all be encoded), with `top_k`."""
    return (
        pd.DataFrame({"query": ["高兴"], "candidates": [["快乐", "难过", "开心"]]}),
        {"top_k": config.serve.top_k},
    )


def pyfunc(config: Config, vocab_file: Path, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    def optional(dtype, name: str) -> ColSpec:
        return ColSpec(dtype, name, required=False)

    return {
        "python_model": SimilarityPyfunc(),
        "artifacts": {
            "model": str(model_dir / MODEL_FILE),
            "vocab": str(vocab_file),
            "phrases": str(model_dir / PHRASES_FILE),
        },
        "model_config": {
            "batch_size": config.serve.batch_size,
            "max_request_chars": config.serve.max_request_chars,
            "max_rows": config.serve.max_rows,
            "top_k": config.serve.top_k,
            "max_top_k": config.serve.max_top_k,
        },
        "signature": ModelSignature(
            inputs=Schema(
                [
                    optional(DataType.string, "text"),
                    optional(DataType.string, "query"),
                    optional(Array(DataType.string), "candidates"),
                ]
            ),
            outputs=Schema(
                [
                    optional(Array(DataType.float), "vector"),
                    optional(Array(DataType.string), "ranked"),
                    optional(Array(DataType.double), "scores"),
                ]
            ),
            params=ParamSchema([ParamSpec("top_k", DataType.long, config.serve.top_k)]),
        ),
        "input_example": input_example(config),
    }
