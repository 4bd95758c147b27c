"""Start real servers (tests, benchmarks): bound to 127.0.0.1, own process group, killed as a
group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests


def tool_env(extra: dict | None = None) -> dict:
    """This environment with the interpreter's own bin folder first on PATH: the servers'
    helpers (uvicorn, gunicorn) live there even when the venv is not activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **(extra or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(
    command: list[str], ready_url: str, log: Path, timeout: float = 120.0, env: dict | None = None
) -> Iterator[subprocess.Popen]:
    """Run `command` in a new session until `ready_url` answers 200; kill its group after."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=tool_env(env),
        )
        try:
            _wait_until_ready(process, ready_url, log, timeout)
            yield process
        finally:
            # mlflow spawns workers that outlive their parent: end the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def served_model(model_uri: str | Path, log: Path, timeout: float = 120.0) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` on a free loopback port, in this interpreter's
    environment; yields the invocations URL."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_uri)]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serve(command, f"{url}/ping", log, timeout):
        yield f"{url}/invocations"
