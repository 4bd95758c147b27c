"""The attention model's params block and its data: labelled reviews (or your own labelled
file) cut into words, split into train / validation / test, and the word vocabulary.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kexue import io, params, splits
from kexue.errors import DataError
from kexue.text.segmentation import Jieba, JiebaSettings
from kexue.text.vocab import UNK, VocabConfig, Vocabulary

LABELS_FILE = "labels.json"  # the label names in id order, beside the data and the model
REVIEW_LABELS = ["negative", "positive"]  # the review files' labels, ids 0 and 1
LABELLED_HEADERS = {"label\ttext": "\t", "label,text": ","}


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
class ServeConfig(params.ServeConfig):
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
