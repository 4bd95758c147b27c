"""Start real servers (tests, benchmarks): bound to 127.0.0.1, own process group, killed as a
group."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

# A server is ready when this URL answers 200, or when this probe returns True.
Ready = str | Callable[[], bool]


def tool_env(extra: dict | None = None) -> dict:
    """This environment with the interpreter's own bin folder first on PATH: the servers'
    helpers (uvicorn, gunicorn) live there even when the venv is not activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **(extra or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_user(user: str | None) -> dict:
    """Popen arguments that run a child as `user` (and only its own group); {} for None."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


@contextlib.contextmanager
def process_group(
    command: list[str],
    log: Path,
    env: dict | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
) -> Iterator[subprocess.Popen]:
    """Run `command` in a new session, its output to `log`; signal its whole group after."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=tool_env(env),
            cwd=cwd,
            **as_user(user),
        )
        try:
            yield process
        finally:
            # mlflow spawns workers that outlive their parent: end the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def serve(
    command: list[str],
    ready: Ready,
    log: Path,
    timeout: float = 120.0,
    env: dict | None = None,
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Run `command` in a new session until it is ready; signal its group after."""
    with process_group(command, log, env, cwd, stop_signal, user) as process:
        _wait_until_ready(process, ready, log, timeout)
        yield process


def _wait_until_ready(process: subprocess.Popen, ready: Ready, log: Path, timeout: float) -> None:
    is_ready = _answers_200(ready) if isinstance(ready, str) else ready
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        if is_ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def _answers_200(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    return probe


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str, log: Path, artifacts_destination: Path | None = None
) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over `backend_store_uri`; yields its URL. With
    `artifacts_destination` it proxies that artifact store: clients never touch its files."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(artifacts_destination)]
    url = f"http://127.0.0.1:{port}"
    # The server's GenAI job workers (idle here) cost seconds of start-up on a small machine.
    with serve(command, f"{url}/health", log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}):
        yield url


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


@contextlib.contextmanager
def kexue_serve(
    project: Path, log: Path, models: dict[str, Path] | None = None, env: dict | None = None
) -> Iterator[str]:
    """`kexue serve --preload` on a free loopback port, run in `project` (its params.yaml),
    serving the folders or URIs `models` names and the other models' champions; yields its
    URL once every model is loaded."""
    port = free_port()
    command = [sys.executable, "-m", "kexue.cli", "serve", "--preload", "--port", str(port)]
    for name, source in (models or {}).items():
        command += ["--model", f"{name}={source}"]
    url = f"http://127.0.0.1:{port}"
    with serve(command, f"{url}/health", log, env=env, cwd=project):
        yield url
