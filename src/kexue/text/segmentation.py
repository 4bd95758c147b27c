"""Word segmentation as character tagging (BMES), its word-level scores, and jieba.

B = first char of a multi-char word, M = middle, E = end, S = a single-char word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BMES = "BMES"
_WORD_TAGS = re.compile("[BM]*[ES]|[BM]+$")
TAG_ID = {tag: i for i, tag in enumerate(BMES)}


# People's Daily writes digits and Latin letters full-width (１９９８年); mapping ASCII to
# full-width before tagging lets "1998年" share what the model learnt. Output keeps the input.
_FULL_WIDTH = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}


def full_width(text: str) -> str:
    return text.translate(_FULL_WIDTH)


def bmes_tags(words: Sequence[str]) -> str:
    """The BMES tag of every character: ['今天', '好'] -> 'BES'."""
    return "".join("S" if len(w) == 1 else "B" + "M" * (len(w) - 2) + "E" for w in words)


def words_from_tags(chars: str, tags: str) -> list[str]:
    """Cut `chars` into words after each E or S tag (a dangling B/M still ends a word)."""
    return [chars[m.start() : m.end()] for m in _WORD_TAGS.finditer(tags)]


def word_spans(words: Iterable[str]) -> set[tuple[int, int]]:
    spans, start = set(), 0
    for word in words:
        spans.add((start, start + len(word)))
        start += len(word)
    return spans


@dataclass
class WordScores:
    """Counts for word-level precision/recall/F1 (a word is right when its span matches)."""

    correct: int = 0
    predicted: int = 0
    gold: int = 0

    def add(self, gold_words: Sequence[str], predicted_words: Sequence[str]) -> None:
        gold, predicted = word_spans(gold_words), word_spans(predicted_words)
        self.correct += len(gold & predicted)
        self.predicted += len(predicted)
        self.gold += len(gold)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        precision = self.correct / self.predicted if self.predicted else 0.0
        recall = self.correct / self.gold if self.gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {f"{prefix}precision": precision, f"{prefix}recall": recall, f"{prefix}f1": f1}


def score_words(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], prefix: str = ""
):
    scores = WordScores()
    for gold_words, predicted_words in zip(gold, predicted, strict=True):
        scores.add(gold_words, predicted_words)
    return scores.as_dict(prefix)


@dataclass(frozen=True)
class JiebaSettings:
    """The `segment` block of params.yaml."""

    hmm: bool
    user_dict: str  # may be an empty file
    corpora: dict[str, str]


class Jieba:
    """jieba's default (accurate) mode with its own tokenizer, so settings never leak globally."""

    def __init__(self, hmm: bool, user_dict: str | Path | None = None):
        import jieba

        self._tokenizer = jieba.Tokenizer()
        self._tokenizer.initialize()
        if user_dict:
            self._tokenizer.load_userdict(str(user_dict))
        self.hmm = hmm

    def cut(self, text: str) -> list[str]:
        return [w for w in self._tokenizer.cut(text, HMM=self.hmm) if w.strip()]
