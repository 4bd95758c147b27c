"""The poet model's params block and its data: 5-character couplets cut from poems, split
by poem into train / validation / test, and the character vocabulary.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kexue import io, splits
from kexue.data.corpora import matching_files, read_titled_texts
from kexue.errors import DataError
from kexue.text.vocab import VocabConfig, Vocabulary

# Han characters: the unified ideographs, extension A, compatibility ideographs, extensions B+.
HAN = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
SENTENCE_END = re.compile(r"[。！？；!?;]")


@dataclass(frozen=True)
class DataConfig(splits.SplitConfig):
    """The split's fractions (of poems) and seed, and what a couplet is."""

    include: list[str]  # glob patterns inside a corpus folder
    line_chars: int  # 5: pentasyllabic (the post); 7 would take heptasyllabic couplets


@dataclass(frozen=True)
class ModelConfig:
    hidden_dim: int  # embedding and gated conv width; the post: 64
    latent_dim: int  # the post: 64
    kernel_size: int  # the post: 3
    encoder_layers: int  # the post: 2
    decoder_layers: int  # the post: 1
    initial_log_var: float  # the codes' log-variance before training; the post: 0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    kl_weight: float  # the post: 1 (the plain evidence lower bound)
    kl_warmup_couplets: int  # the KL weight rises from 0 over this many couplets; the post: 0
    max_couplets: int | None  # a seeded subset of the training couplets (None: all)
    patience: int | None  # epochs without a lower validation loss before stopping


@dataclass(frozen=True)
class EvaluateConfig:
    samples: int  # couplets drawn from the prior for the sample metrics
    temperatures: list[float]  # the sweep plotted next to argmax
    shown: int  # samples written to samples.txt
    interpolation_steps: int
    seed: int


@dataclass(frozen=True)
class ServeConfig:
    temperature: float  # the default
    max_temperature: float
    max_poems: int  # per request
    batch_size: int  # codes decoded per forward pass


@dataclass(frozen=True)
class Config:
    corpus: str
    data: DataConfig
    vocab: VocabConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    serve: ServeConfig
    registered_name: str


# -- data ---------------------------------------------------------------------------------


def couplets_of(text: str, line_chars: int) -> list[str]:
    """The sentences of a poem that are two lines of `line_chars` Han characters, each as the
    lines' characters without punctuation. Lines with a missing character (□), a variant in
    [brackets] or any other mark are not couplets."""
    pattern = re.compile(f"({HAN}{{{line_chars}}})[，,]({HAN}{{{line_chars}}})")
    found = (pattern.fullmatch(s.strip()) for s in SENTENCE_END.split(text))
    return [m.group(1) + m.group(2) for m in found if m]


def split_poems(
    poems: list[list[str]], config: splits.SplitConfig, where: str
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """({"train", "validation", "test"}: couplets, each once a side; the counts dropped):
    whole poems go to one side (seeded); a held-out couplet that an earlier side also has
    is dropped, so no test couplet was trained on or chosen on."""
    numbered = [(number, couplet) for number, poem in enumerate(poems) for couplet in poem]
    sides = splits.split_groups(numbered, lambda item: item[0], config, where)
    couplets = {name: list(dict.fromkeys(c for _, c in side)) for name, side in sides.items()}
    return splits.drop_overlap(couplets, normalised)


def normalised(couplet: str) -> str:
    """A couplet as the model reads it: its characters, punctuation gone (couplets_of)."""
    return couplet


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """Poems of the corpora -> train.txt, validation.txt and test.txt, a couplet a line
    ("line line")."""
    data = config.data
    files = matching_files(corpora, data.include, "poet.data.include")
    poems = [couplets_of(p.text, data.line_chars) for f in files for p in read_titled_texts(f)]
    poems = [p for p in poems if p]
    if len(poems) < 2:
        raise DataError(
            f"{corpora[0]}: {len(poems)} poems with {data.line_chars}-character couplets; "
            "need at least 2 to split"
        )
    sides, dropped = split_poems(poems, data, f"{corpora[0]}: poems")
    for split, couplets in sides.items():
        if not couplets:
            raise DataError(f"{corpora[0]}: the split left no {split} couplet")
        io.write_lines(out_dir / f"{split}.txt", [as_lines(c) for c in couplets])
    counts = {f"{split}_couplets": len(couplets) for split, couplets in sides.items()}
    return {"poems": len(poems), **counts, **dropped}


def as_lines(couplet: str) -> str:
    half = len(couplet) // 2
    return f"{couplet[:half]} {couplet[half:]}"


def read_couplets(path: Path, line_chars: int) -> list[str]:
    """A prepared split: "line line" a line -> the couplets' characters."""
    couplets = []
    for number, text in enumerate(io.read_lines(path), start=1):
        lines = text.split()
        if len(lines) != 2 or any(len(line) != line_chars for line in lines):
            raise DataError(
                f"{path}:{number}: expected two lines of {line_chars} characters, got {text!r}"
            )
        couplets.append("".join(lines))
    return couplets


def build_vocab(config: Config, data_dir: Path) -> Vocabulary:
    """Characters of the training couplets."""
    couplets = read_couplets(data_dir / "train.txt", config.data.line_chars)
    return Vocabulary.build(couplets, config.vocab.min_count, config.vocab.max_size)


def encode(couplets: list[str], vocab: Vocabulary) -> np.ndarray:
    return np.array([vocab.encode(c) for c in couplets], dtype=np.int32).reshape(len(couplets), -1)
