"""The one evaluation protocol: fixed, seeded train / validation / test splits, no overlap.

Every model's prepare stage splits its data here, once, into three files. Training fits on
`train`, makes every choice (early stopping, decoding, thresholds) on `validation`, and
only the evaluate stage reads `test`. Items are split by group (a paragraph, a poem, a
title) so that related items stay on one side; then any held-out item that, normalised
the way the model sees it, also occurs on an earlier side is dropped from its split.

Pure Python: prepare stages import it without TensorFlow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kexue.errors import DataError

T = TypeVar("T")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of the groups held out for validation and test, and the split's seed."""

    validation_fraction: float
    test_fraction: float
    split_seed: int


def split_groups(
    items: Sequence[T],
    group_of: Callable[[T], Hashable],
    config: SplitConfig,
    where: str,
) -> dict[str, list[T]]:
    """{"train", "validation", "test"}: the items, by a seeded shuffle of their groups.

    Each held-out side gets `round(groups * fraction)` groups, at least one when its
    fraction is above 0; `where` names the data in the error raised when too few groups
    are left for training.
    """
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(group_of(item), []).append(item)
    order = list(groups)
    random.Random(config.split_seed).shuffle(order)
    n_test = _held_out(len(order), config.test_fraction)
    n_validation = _held_out(len(order), config.validation_fraction)
    if n_test + n_validation >= len(order):
        raise DataError(
            f"{where}: {len(order)} groups cannot give {n_test} to test, {n_validation} to "
            "validation and still leave one for training; expected more data"
        )
    sides = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": order[n_test + n_validation :],
    }
    return {name: [item for key in sides[name] for item in groups[key]] for name in SPLITS}


def _held_out(n_groups: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, round(n_groups * fraction))


def fewest_groups(config: SplitConfig) -> int:
    """The fewest groups from which on `split_groups` splits any number of groups by
    `config` (each held-out side its share, one group or more left for training)."""
    held_out = config.validation_fraction + config.test_fraction
    if held_out >= 1:
        raise ValueError("the held-out fractions must add up to less than 1")
    # Each side holds at most n * fraction + 1 groups: beyond this, training keeps one.
    always = math.ceil(2 / (1 - held_out)) + 1
    failing = [
        n
        for n in range(1, always)
        if _held_out(n, config.test_fraction) + _held_out(n, config.validation_fraction) >= n
    ]
    return max(failing, default=0) + 1


def drop_overlap(
    splits: dict[str, list[T]], key: Callable[[T], Hashable]
) -> tuple[dict[str, list[T]], dict[str, int]]:
    """The splits with every validation item whose key occurs in training, and every test
    item whose key occurs in training or validation, dropped; and the count dropped from
    each side ({"validation_overlap_dropped": n, "test_overlap_dropped": m})."""
    seen = {key(item) for item in splits["train"]}
    kept: dict[str, list[T]] = {"train": list(splits["train"])}
    dropped = {}
    for side in ("validation", "test"):
        kept[side] = [item for item in splits[side] if key(item) not in seen]
        dropped[f"{side}_overlap_dropped"] = len(splits[side]) - len(kept[side])
        seen |= {key(item) for item in kept[side]}
    return kept, dropped


def overlap(held_out: Iterable[Hashable], seen: Iterable[Hashable]) -> int:
    """How many held-out keys occur among the seen ones (0 is the protocol's promise)."""
    seen = set(seen)
    return sum(1 for item in held_out if item in seen)
