"""Readers for the text corpora. Models receive lists, never paths."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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


def matching_files(corpora: list[Path], include: list[str], key: str) -> list[Path]:
    """Files as given, and inside folders the files matching the `include` patterns (the
    params key `key` names them in the error when a folder has none)."""
    files = []
    for corpus in corpora:
        if corpus.is_dir():
            matched = sorted({f for pattern in include for f in corpus.glob(pattern)})
            if not matched:
                raise DataError(f"{corpus}: no file matches {include} ({key})")
            files.extend(matched)
        elif corpus.is_file():
            files.append(corpus)
        else:
            raise DataError(f"{corpus}: file or folder not found")
    return files


# -- (text, title) pairs --------------------------------------------------------------------


@dataclass(frozen=True)
class TitledText:
    """A text and its human-written title (a poem and its title, an article and its headline)."""

    text: str
    title: str


def read_titled_texts(path: str | Path) -> list[TitledText]:
    """(text, title) pairs from one file, by its suffix:

    .jsonl  one {"text": ..., "title": ...} object a line (any corpus; the generic format)
    .tsv    text<TAB>title a line
    .json   chinese-poetry: a list of {"title", "paragraphs", ...}; the text is the paragraphs
            joined without editors' notes in （）, the title is the poem's own (poem_title)
    .txt    THUCNews layout: the first line is the title, the rest the article
    """
    path = Path(path)
    readers = {
        ".jsonl": _read_jsonl,
        ".tsv": _read_tsv,
        ".json": _read_poems,
        ".txt": _read_article,
    }
    if path.suffix not in readers:
        raise DataError(f"{path}: expected a .jsonl, .tsv, .json (chinese-poetry) or .txt file")
    return readers[path.suffix](path)


def _read_jsonl(path: Path) -> list[TitledText]:
    pairs = []
    for number, line in enumerate(io.read_lines(path), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        pairs.append(_pair(row, "text", "title", f"{path}:{number}"))
    return pairs


def _read_tsv(path: Path) -> list[TitledText]:
    pairs = []
    for number, line in enumerate(io.read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected text<TAB>title, got {len(fields)} fields")
        pairs.append(
            _pair(
                dict(zip(("text", "title"), fields, strict=True)),
                "text",
                "title",
                f"{path}:{number}",
            )
        )
    return pairs


def _read_poems(path: Path) -> list[TitledText]:
    poems = io.read_json(path)
    if not isinstance(poems, list):
        raise DataError(f"{path}: expected a JSON list of poems")
    pairs = []
    for number, poem in enumerate(poems, start=1):
        where = f"{path}: poem {number}"
        if not isinstance(poem, dict) or not isinstance(poem.get("paragraphs"), list):
            raise DataError(f"{where}: expected an object with a list `paragraphs`")
        if not all(isinstance(line, str) for line in poem["paragraphs"]):
            raise DataError(f"{where}: paragraphs: expected strings")
        row = {"text": "".join(poem["paragraphs"]), "title": poem.get("title")}
        pair = _pair(row, "text", "title", where)
        pairs.append(TitledText(_NOTE.sub("", pair.text), poem_title(pair.title)))
    return pairs


# Editors' notes in full-width brackets, "詩（幷序）"; a poem's number in its series, "其二".
_NOTE = re.compile(r"（[^（）]*）")
_SERIES_NUMBER = re.compile(r"其?[一二三四五六七八九十百〇]+")


def poem_title(raw: str) -> str:
    """The poem's own title: '帝京篇十首 一' -> '帝京篇十首' (series number dropped),
    '相和歌辭 從軍行' -> '從軍行' (the collection it belongs to dropped), notes in （） dropped."""
    parts = _NOTE.sub("", raw).split()
    while len(parts) > 1 and _SERIES_NUMBER.fullmatch(parts[-1]):
        parts.pop()
    return parts[-1] if parts else ""


def _read_article(path: Path) -> list[TitledText]:
    title, *body = io.read_lines(path, allow_empty_lines=True)
    return [TitledText("".join(body), title)]


def _pair(row: object, text_key: str, title_key: str, where: str) -> TitledText:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with `{text_key}` and `{title_key}`")
    for key in (text_key, title_key):
        if not isinstance(row.get(key), str):
            raise DataError(f"{where}: {key}: expected a string, got {type(row.get(key)).__name__}")
    return TitledText(row[text_key], row[title_key])
