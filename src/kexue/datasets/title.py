"""The title model's params block and its data: (text, title) pairs split into train /
validation / test, and the character vocabulary.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kexue import io, params, splits
from kexue.data.corpora import TitledText, matching_files, read_titled_texts
from kexue.errors import DataError
from kexue.text.vocab import PAD, UNK, VocabConfig, Vocabulary

START, END = "<s>", "</s>"


@dataclass(frozen=True)
class DataConfig(splits.SplitConfig):
    """The split of the titles (validation_fraction, test_fraction, split_seed), then the
    corpus filters."""

    include: list[str]
    min_text_chars: int
    max_text_chars: int
    min_title_chars: int
    max_title_chars: int
    drop_titles: list[str]
    max_per_title: int | None
    max_pairs: int | None


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
    patience: int  # epochs without a lower validation loss before stopping
    length_buckets: list[int]


@dataclass(frozen=True)
class DecodeConfig:
    candidate_widths: list[int]  # tried on validation by the train stage (1: greedy)
    beam_width: int
    max_beam_width: int


@dataclass(frozen=True)
class EvaluateConfig:
    first_k: int
    tfidf_orders: list[int]
    samples: int


@dataclass(frozen=True)
class ServeConfig(params.ServeConfig):
    # Texts x beam width per request: a beam costs a decoding, whatever its text's length.
    max_beams: int


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


def model_text(text: str, max_text_chars: int) -> str:
    """The text as the model reads it: compact, cut to `max_text_chars`."""
    return compact(text)[:max_text_chars]


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
        text = model_text(text, data.max_text_chars)
        if text not in seen:
            seen.add(text)
            per_title[title] += 1
            kept.append(TitledText(text, title))
    return kept


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """(text, title) pairs of the corpora -> cleaned, capped, split by title into train /
    validation / test JSONL files: a series of poems ("…十首") or a common title is not
    learnt from its own held-out siblings. A held-out pair whose text, as the model reads
    it, occurs on an earlier side is dropped."""
    files = matching_files(corpora, config.data.include, "title.data.include")
    pairs = clean_pairs([p for f in files for p in read_titled_texts(f)], config.data)
    if not pairs:
        raise DataError(f"{corpora[0]}: no (text, title) pair passes the title.data filters")
    random.Random(config.data.split_seed).shuffle(pairs)
    if config.data.max_pairs is not None:
        pairs = pairs[: config.data.max_pairs]
    by_title = splits.split_groups(
        pairs, lambda p: p.title, config.data, f"{corpora[0]} (title.data: fractions, filters)"
    )
    by_title, counts = splits.drop_overlap(
        by_title, lambda p: model_text(p.text, config.data.max_text_chars)
    )
    for side, rows in by_title.items():
        lines = [json.dumps(dataclasses.asdict(p), ensure_ascii=False) for p in rows]
        io.write_lines(out_dir / f"{side}.jsonl", lines)
        counts[f"{side}_pairs"] = len(rows)
    return {"files": len(files), **counts}


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
