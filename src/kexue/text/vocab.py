"""Token vocabularies: id 0 pads, id 1 stands for any unknown token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kexue import io
from kexue.errors import DataError

PAD, UNK = "<pad>", "<unk>"


@dataclass(frozen=True)
class VocabConfig:
    """A model's `vocab` block in params.yaml."""

    min_count: int  # rarer tokens share the unknown id
    max_size: int | None


class Vocabulary:
    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD} and {UNK}")
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(
        cls,
        sequences: Iterable[Iterable[str]],
        min_count: int,
        max_size: int | None,
        reserved: Sequence[str] = (),
    ) -> Vocabulary:
        """Most frequent tokens first (ties by token, so the result is deterministic), after
        the `reserved` tokens (e.g. start/end markers) that take the ids right after UNK."""
        counts = Counter(token for sequence in sequences for token in sequence)
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count and t not in reserved),
            key=lambda t: (-counts[t], t),
        )
        head = [PAD, UNK, *reserved]
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(head))]
        return cls([*head, *ranked])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index.get(token, 1) for token in tokens]

    def save(self, path: str | Path) -> None:
        io.write_json(path, {"tokens": self.tokens})

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        data = io.read_json(path)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or tokens[:2] != [PAD, UNK]:
            raise DataError(f"{path}: expected {{'tokens': ['{PAD}', '{UNK}', ...]}}")
        return cls(tokens)
