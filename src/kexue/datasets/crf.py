"""The crf model's params block and its data: a gold-segmented corpus split by paragraph
into train / validation / test sentences, and the character vocabulary.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kexue import io, params, splits
from kexue.data.corpora import read_segmented, split_sentences
from kexue.text.segmentation import (
    full_width,
)
from kexue.text.vocab import VocabConfig, Vocabulary


@dataclass(frozen=True)
class DataConfig(splits.SplitConfig):
    """The split of the paragraphs (validation_fraction, test_fraction, split_seed), then
    the longest sentence."""

    max_sentence_chars: int


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int
    conv_filters: int
    conv_layers: int
    kernel_size: int
    dropout: float


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    max_sentences: int | None
    patience: int  # epochs without a lower validation loss before stopping
    length_buckets: list[int]


@dataclass(frozen=True)
class JiebaConfig:
    hmm: bool


@dataclass(frozen=True)
class Config:
    corpus: str
    data: DataConfig
    vocab: VocabConfig
    model: ModelConfig
    train: TrainConfig
    serve: params.ServeConfig
    jieba: JiebaConfig
    registered_name: str


# -- data ---------------------------------------------------------------------------------


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """Split the corpus by paragraph into train / validation / test, then into sentences
    (one per line); a held-out sentence the model would see as it sees an earlier side's
    (captions, boilerplate) is dropped."""
    paragraphs = [words for corpus in corpora for words in read_segmented(corpus)]
    by_paragraph = splits.split_groups(
        list(range(len(paragraphs))), lambda i: i, config.data, f"{corpora[0]} (crf.data)"
    )
    sentences = {
        side: [
            s for i in rows for s in split_sentences(paragraphs[i], config.data.max_sentence_chars)
        ]
        for side, rows in by_paragraph.items()
    }
    sentences, counts = splits.drop_overlap(sentences, normalised)
    for side, rows in sentences.items():
        io.write_lines(out_dir / f"{side}.txt", [" ".join(s) for s in rows])
        counts[f"{side}_sentences"] = len(rows)
    return counts


def normalised(words: list[str]) -> str:
    """A sentence's characters as the model sees them: the key of the overlap check."""
    return full_width("".join(words))


def read_sentences(path: Path) -> list[list[str]]:
    return [line.split(" ") for line in io.read_lines(path)]


def char_sequences(sentences: list[list[str]]) -> list[str]:
    return ["".join(words) for words in sentences]


def build_vocab(config: Config, data_dir: Path) -> Vocabulary:
    chars = [full_width(text) for text in char_sequences(read_sentences(data_dir / "train.txt"))]
    return Vocabulary.build(chars, config.vocab.min_count, config.vocab.max_size)


def encode_chars(vocab: Vocabulary, text: str) -> list[int]:
    return vocab.encode(full_width(text))
