"""The CLI's side of the daemon: a `kexue serve` kept running in the background, on a Unix
socket only this user can open, so a model verb answers without importing TensorFlow or
MLflow and without loading its model again (as Gradle's and Bazel's daemons do).

    kexue segment 今天天气不错     # starts the daemon on first use, then asks it
    kexue daemon status           # its pid, socket, and the models it holds
    kexue daemon stop

The first call starts it (`kexue daemon run`, in its own session, logging to
`.kexue/daemon.log`) and waits for it; its pid and socket are in `.kexue/daemon.json`. It
exits by itself after params.yaml `daemon.idle_seconds` without a call. A daemon that stops
answering is reported in one line on stderr and the call is answered in this process.

This module imports only the standard library: it is all a warm call runs before it prints.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from kexue.errors import KexueError

STATE = (".kexue", "daemon.json")  # under the project: {pid, socket, **identity()}
LOG = (".kexue", "daemon.log")
START_LOCK = (".kexue", "daemon.lock")
# The route of the daemon that answers a model call (kexue.invoke's format).
CALL_ROUTE = "/cli/invocations"
# HTTP statuses of the call route: the model's own error (the CLI's one line), and a fault
# of the daemon (the call is answered in process instead).
REFUSED, FAILED = 422, 500
# Seconds between looks at a starting daemon, and to wait for a stopped one to exit.
POLL_SECONDS = 0.05
STOP_WAIT_SECONDS = 10


class Unavailable(Exception):
    """The daemon cannot answer: not running, not starting, or it broke off."""


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def wanted() -> bool:
    """Whether model verbs use the daemon: not when KEXUE_DAEMON=0 (tests, scripts), and only
    inside a project (a folder with params.yaml, where its state lives)."""
    return os.environ.get("KEXUE_DAEMON", "1") != "0" and (_root() / "params.yaml").is_file()


def _root() -> Path:
    from kexue.tracking import project_root

    return project_root()


def state_file() -> Path:
    return _root().joinpath(*STATE)


def socket_path(root: Path) -> Path:
    """The socket of `root`'s daemon, in a folder of this user's only (XDG_RUNTIME_DIR, else
    the temp folder): a project path can be longer than a socket address may be."""
    import hashlib

    base = Path(os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp")
    folder = base / f"kexue-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    held = folder.stat()
    if held.st_uid != os.getuid() or held.st_mode & 0o077:
        raise KexueError(f"{folder}: not a folder of this user's only (mode 0700); remove it")
    return folder / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.sock"


def read_state() -> dict | None:
    """The running daemon's {pid, socket, **identity()}, or None when there is none."""
    try:
        return json.loads(state_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ask(request: dict) -> dict:
    """The answer to a model call (`kexue.invoke`) from the project's daemon, started if need
    be; answered in this process, with one line on stderr, when the daemon cannot."""
    from kexue import invoke

    try:
        return _send(_daemon(), request)
    except Unavailable as err:
        print(f"kexue: {err}; answering in this process", file=sys.stderr)
        return invoke.run(request)


def _send(state: dict, request: dict) -> dict:
    connection = UnixConnection(state["socket"])
    try:
        connection.request(
            "POST", CALL_ROUTE, json.dumps(request), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        body = json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError) as err:
        _forget(state)
        raise Unavailable(f"the daemon (pid {state['pid']}) did not answer ({err})") from None
    finally:
        connection.close()
    if response.status == REFUSED:
        raise KexueError(body["error"])
    if response.status != http.client.OK:
        raise Unavailable(f"the daemon (pid {state['pid']}) failed: {body.get('error', body)}")
    return body


def _daemon() -> dict:
    """The state of a daemon serving this project's store, started if there is none."""
    import fcntl

    state = read_state()
    if state is not None and not alive(state["pid"]):
        _forget(state)  # the next call starts a new one
        raise Unavailable(f"the daemon (pid {state['pid']}) has exited")
    if _compatible(state):
        return state
    lock_path = _root().joinpath(*START_LOCK)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one start at a time; the others use it
        state = read_state()
        if _compatible(state):
            return state
        if state is not None:  # another store's or kexue's, or it just died
            stop(state)
        return _start()


def identity() -> dict:
    """What a daemon must share with the caller to answer for it: the store, the Python and
    the kexue it runs."""
    from kexue import __version__
    from kexue.tracking import tracking_uri

    return {"tracking_uri": tracking_uri(), "python": sys.executable, "kexue": __version__}


def _compatible(state: dict | None) -> bool:
    return (
        state is not None
        and alive(state["pid"])
        and all(state.get(key) == value for key, value in identity().items())
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is another user's now
        return False
    try:  # an exited child its parent has not reaped yet (Linux): gone too
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def _start() -> dict:
    """Start the daemon in its own session and wait until it listens."""
    import subprocess

    root = _root()
    try:
        timeout = _settings(root)["start_timeout_seconds"]
    except KexueError as err:  # params.yaml's daemon block: the call itself can still run
        raise Unavailable(f"cannot start the daemon: {err}") from None
    with open(root.joinpath(*LOG), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kexue.cli", "daemon", "run"],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # not killed by the terminal's Ctrl-C; its own group
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state()
        if state is not None and state["pid"] == process.pid:
            return state
        if process.poll() is not None:
            raise Unavailable(
                f"the daemon exited at start-up (code {process.returncode}; "
                f"see {root.joinpath(*LOG)})"
            )
        time.sleep(POLL_SECONDS)
    raise Unavailable(
        f"the daemon (pid {process.pid}) did not start within {timeout:g} s "
        "(params.yaml daemon.start_timeout_seconds)"
    )


def _settings(root: Path) -> dict:
    """params.yaml's `daemon` block (read only to start one: YAML is slow to import)."""
    from kexue import params
    from kexue.daemon.server import Settings

    return vars(
        params.parse(Settings, params.block(params.load(root / "params.yaml"), "daemon"), "daemon")
    )


def _forget(state: dict) -> None:
    """Remove the state of a daemon that does not answer, so the next call starts one."""
    if read_state() == state:
        state_file().unlink(missing_ok=True)


def stop(state: dict) -> bool:
    """Ask the daemon to exit (SIGTERM to its process group) and wait; False if it was gone."""
    try:
        os.killpg(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        _forget(state)
        return False
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    _forget(state)
    return True


def status() -> dict | None:
    """The daemon's state and the models it serves (GET /models), or None."""
    state = read_state()
    if state is None or not alive(state["pid"]):
        return None
    connection = UnixConnection(state["socket"], timeout=STOP_WAIT_SECONDS)
    try:
        connection.request("GET", "/models")
        models = json.loads(connection.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError) as err:
        return {**state, "error": str(err)}
    finally:
        connection.close()
    return {**state, "models": models}


def _command(args: argparse.Namespace) -> None:
    if args.action == "run":
        from kexue.daemon import server

        server.run()
        return
    state = read_state()
    if args.action == "stop":
        print(f"stopped the daemon (pid {state['pid']})" if state and stop(state) else "no daemon")
        return
    found = status()
    if found is None:
        print("no daemon")
        return
    print(f"pid {found['pid']}, socket {found['socket']}, store {found['tracking_uri']}")
    if "error" in found:
        raise KexueError(f"the daemon does not answer: {found['error']}")
    for model in found["models"]:
        served = f"version {model['version']}" if model.get("version") else model.get("uri")
        print(f"{model['model']}\t{served if model['loaded'] else 'not loaded'}")


def add_verb(verbs) -> None:
    verb = verbs.add_parser(
        "daemon",
        help="the background server the model verbs answer from: status, stop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verb.add_argument(
        "action",
        choices=("status", "stop", "run"),
        help="status: its pid and models; stop: end it; run: serve in this process (what the "
        "first model call starts in the background)",
    )
    verb.set_defaults(run=_command)
