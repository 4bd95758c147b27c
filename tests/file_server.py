"""What the download tests share: a real HTTP file server on 127.0.0.1 (its own process
group, killed at teardown) that records each request's Range header, and archive builders."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from kexue.servers import free_port, serve

HERE = Path(__file__).resolve().parent


@dataclass
class FileServer:
    url: str
    root: Path
    request_log: Path

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"

    def ranges(self, path: str) -> list[str]:
        """The Range headers (or '-') of the requests for `path`, in order."""
        lines = self.request_log.read_text(encoding="utf-8").splitlines()
        return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == path]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> FileServer:
    root = tmp_path_factory.mktemp("served")
    logs = tmp_path_factory.mktemp("server_logs")
    port = free_port()
    command = [
        sys.executable,
        str(HERE / "loopback_http_server.py"),
        str(root),
        str(port),
        str(logs / "requests.log"),
    ]
    with serve(command, f"http://127.0.0.1:{port}/_ready", logs / "server.log", timeout=30):
        yield FileServer(f"http://127.0.0.1:{port}", root, logs / "requests.log")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_archive(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar ("w") or gzipped tar ("w:gz") of regular files, built in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
