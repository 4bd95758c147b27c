"""Reading and writing files safely: UTF-8 with line-numbered errors, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kexue.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: some writers (keras.saving) insist on it.
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


# Beside a prepared data set: what it was made from, so a model's lineage names its data.
SOURCES_FILE = "sources.json"


def write_sources(out_dir: str | os.PathLike, sources: dict[str, str]) -> None:
    """`out_dir/sources.json`: {input path or URL: its sha256}."""
    write_json(Path(out_dir) / SOURCES_FILE, sources)


def read_sources(data_dir: str | os.PathLike) -> dict[str, str]:
    """The inputs a prepared folder was made from ({} for one made before it said)."""
    path = Path(data_dir) / SOURCES_FILE
    return read_json(path) if path.is_file() else {}


def sha256(path: str | os.PathLike) -> str:
    """A file's sha256 (what `sha256sum` prints); a folder's, over its files' names and bytes."""
    path = Path(path)
    if path.is_dir():
        return hash_paths([path])
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digests(paths: list[Path]) -> dict[str, str]:
    """{path: sha256} of files or folders, as `write_sources` records them."""
    return {str(path): sha256(path) for path in paths}


def write_confusion(path: str | os.PathLike, actual: list[str], predicted: list[str]) -> None:
    """One {actual, predicted} row per example: the data of DVC's `confusion` template."""
    rows = [{"actual": a, "predicted": p} for a, p in zip(actual, predicted, strict=True)]
    write_json(path, rows)


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a valid UTF-8 JSON file ({err})") from None


def read_lines(path: str | os.PathLike, allow_empty_lines: bool = False) -> list[str]:
    """Lines of a UTF-8 text file without their newlines.

    Raises DataError naming the file and line for a missing or empty file, bytes that are
    not UTF-8, or (unless allowed) a blank line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    lines = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{number}: not UTF-8 "
                    f"(byte {err.start}: {raw[err.start : err.start + 1]!r})"
                ) from None
            if not line.strip() and not allow_empty_lines:
                raise DataError(f"{path}:{number}: empty line; expected text")
            lines.append(line)
    if not lines:
        raise DataError(f"{path}: file is empty; expected at least one line of text")
    return lines


def hash_paths(paths: list[str | os.PathLike | None]) -> str:
    """SHA-256 over the contents of files and folders (sorted), to tag runs with their data.
    None stands for an input a model does not have (a vocabulary) and is skipped."""
    digest = hashlib.sha256()
    for root in sorted(Path(p) for p in paths if p is not None):
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root.parent)).encode())
            with file.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
