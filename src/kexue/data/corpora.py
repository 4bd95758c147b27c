"""Readers for the text corpora. Models receive lists, never paths."""

from __future__ import annotations

import re
from pathlib import Path

from kexue import io
from kexue.errors import DataError

# A word token, optionally with a part-of-speech suffix as in People's Daily: "世纪/n".
_POS_SUFFIX = re.compile(r"/[A-Za-z]+$")
SENTENCE_END = frozenset("。！？；!?;")
CLAUSE_END = frozenset("，、：,:")


def read_segmented(path: str | Path) -> list[list[str]]:
    """A gold-segmented corpus: one paragraph a line, words separated by white space.

    Accepts the People's Daily 1998 format (`word/POS`, compounds in [brackets]) and the
    SIGHAN bakeoff format (plain words). Each line must hold at least one word.
    """
    paragraphs = []
    for number, line in enumerate(io.read_lines(path), start=1):
        words = [_strip_markup(token) for token in line.split()]
        words = [w for w in words if w]
        if not words:
            raise DataError(
                f"{path}:{number}: no words on this line; expected space-separated words"
            )
        paragraphs.append(words)
    return paragraphs


def _strip_markup(token: str) -> str:
    token = token.lstrip("[")
    token = token.split("]")[0] if "]" in token else token
    return _POS_SUFFIX.sub("", token)


def split_sentences(words: list[str], max_chars: int) -> list[list[str]]:
    """Cut a paragraph after sentence-final punctuation, then long pieces after clause marks,
    then any remainder at word boundaries, so no piece exceeds `max_chars` characters
    (a single word longer than that stays whole)."""
    pieces = _cut_after(words, SENTENCE_END)
    pieces = [
        p
        for piece in pieces
        for p in (_cut_after(piece, CLAUSE_END) if _chars(piece) > max_chars else [piece])
    ]
    return [p for piece in pieces for p in _pack(piece, max_chars)]


def _chars(words: list[str]) -> int:
    return sum(len(w) for w in words)


def _cut_after(words: list[str], marks: frozenset[str]) -> list[list[str]]:
    pieces, current = [], []
    for word in words:
        current.append(word)
        if word in marks:
            pieces.append(current)
            current = []
    if current:
        pieces.append(current)
    return pieces


def _pack(words: list[str], max_chars: int) -> list[list[str]]:
    pieces, current = [], []
    for word in words:
        if current and _chars(current) + len(word) > max_chars:
            pieces.append(current)
            current = []
        current.append(word)
    if current:
        pieces.append(current)
    return pieces
