"""The similarity model's params block and its data: groups of synonymous phrases, members
held out for validation and test, and the character vocabulary.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kexue import io, splits
from kexue.data.cilin import SynonymGroup, read_cilin, read_group_lines
from kexue.errors import DataError
from kexue.text.vocab import Vocabulary

PHRASES_FILE = "phrases.txt"  # every known phrase, ranked when a query comes without candidates


@dataclass(frozen=True)
class DataConfig:
    format: Literal["cilin", "groups"]  # `CODE= text text` lines | `group_id<TAB>text` lines
    max_groups: int | None
    min_group_to_hold_out: int  # groups this large lend one member to validation or test
    validation_fraction: float  # of those groups
    test_fraction: float
    split_seed: int


@dataclass(frozen=True)
class VocabConfig:
    min_count: int
    max_size: int | None


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int
    hidden_dim: int


@dataclass(frozen=True)
class LossConfig:
    scale: float
    margin: float


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # the most; training stops early on the validation loss
    patience: int  # epochs without a lower validation loss before stopping
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class EvaluateConfig:
    top_k: list[int]


@dataclass(frozen=True)
class ServeConfig:
    batch_size: int
    max_request_chars: int
    # Texts, queries or candidates per request: each costs an encoding, a query a ranking of
    # the known phrases, whatever its length.
    max_rows: int
    top_k: int
    max_top_k: int


@dataclass(frozen=True)
class Config:
    corpus: str
    data: DataConfig
    vocab: VocabConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    serve: ServeConfig
    registered_name: str


# -- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One phrase of one group: a training example or a query."""

    group: str
    text: str


def split_members(
    groups: list[SynonymGroup], data: DataConfig
) -> tuple[dict[str, list[Member]], dict[str, int]]:
    """({"train", "validation", "test"}: members, overlap dropped): seeded fractions of the
    groups of min_group_to_hold_out+ members lend one seeded member each to validation or
    test, chosen among the members of no other group; every other member trains."""
    rng = random.Random(data.split_seed)
    if data.max_groups is not None and data.max_groups < len(groups):
        groups = sorted(rng.sample(groups, data.max_groups), key=lambda g: g.code)
    groups_of = Counter(text for group in groups for text in group.members)
    lenders = [
        group
        for group in groups
        if len(group.members) >= data.min_group_to_hold_out
        and any(groups_of[text] == 1 for text in group.members)
    ]
    config = splits.SplitConfig(data.validation_fraction, data.test_fraction, data.split_seed)
    side_of = {
        group.code: side
        for side, side_groups in splits.split_groups(
            lenders, lambda g: g.code, config, "similarity groups"
        ).items()
        for group in side_groups
    }
    members: dict[str, list[Member]] = {side: [] for side in splits.SPLITS}
    for group in groups:
        side = side_of.get(group.code, "train")
        own = [i for i, text in enumerate(group.members) if groups_of[text] == 1]
        held_out = rng.choice(own) if side != "train" else None
        for i, text in enumerate(group.members):
            members[side if i == held_out else "train"].append(Member(group.code, text))
    # A held-out text is in no other group: nothing is dropped, but the protocol checks.
    return splits.drop_overlap(members, member_text)


def member_text(member: Member) -> str:
    """A member as retrieval sees it: its text (the gallery holds texts, not members)."""
    return member.text


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """Fixed train / validation / test members (group<TAB>phrase lines) and every known
    phrase (served with the model)."""
    read = read_cilin if config.data.format == "cilin" else read_group_lines
    groups = [group for corpus in corpora for group in read(corpus)]
    members, dropped = split_members(groups, config.data)
    for side, side_members in members.items():
        write_members(out_dir / f"{side}.tsv", side_members)
    phrases = list(dict.fromkeys(text for group in groups for text in group.members))
    io.write_lines(out_dir / PHRASES_FILE, phrases)
    return {
        "groups": len({m.group for m in members["train"]}),
        "train_members": len(members["train"]),
        "validation_members": len(members["validation"]),
        "test_members": len(members["test"]),
        "known_phrases": len(phrases),
        **dropped,
    }


def write_members(path: Path, members: list[Member]) -> None:
    io.write_lines(path, [f"{m.group}\t{m.text}" for m in members])


def read_members(path: Path) -> list[Member]:
    members = []
    for number, line in enumerate(io.read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2 or not all(fields):
            raise DataError(f"{path}:{number}: expected group<TAB>phrase")
        members.append(Member(*fields))
    return members


def build_vocab(config: Config, data_dir: Path) -> Vocabulary:
    texts = [m.text for m in read_members(data_dir / "train.tsv")]
    return Vocabulary.build(texts, config.vocab.min_count, config.vocab.max_size)


def char_ids(texts: list[str], vocab: Vocabulary) -> np.ndarray:
    """(len(texts), longest) int32 character ids, 0-padded at the end (the GRU masks 0)."""
    ids = np.zeros((len(texts), max([1, *map(len, texts)])), dtype=np.int32)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = vocab.encode(text)
    return ids


def group_index(train: list[Member]) -> dict[str, int]:
    """Each training group's class id; held-out members take their group's."""
    return {group: i for i, group in enumerate(sorted({m.group for m in train}))}
