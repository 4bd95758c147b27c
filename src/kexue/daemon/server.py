"""The daemon: `kexue serve`'s app (kexue.serve.app, its slots and routes as they are) on the
project's Unix socket, plus the route the CLI's model verbs call. That route answers as
`kexue.invoke` does in process, from the model the CLI would load:

- the champion: its version is read on every call, and a slot whose version is not it
  reloads first, so a call after the alias moved gets the new version. On a local SQLite
  store the version is one SELECT on MLflow's alias table (one or two milliseconds, MLflow's
  lookup three to ten even warm: bench/cli.py); on any other store, or if that read fails,
  MLflow's lookup, held for `alias_cache_seconds`;
- a --model folder (reloaded when its MLmodel file changes) or URI (kept: a version and a
  run do not change; an alias URI is loaded on each call).
A model that is not there or does not load is left to `kexue.invoke.load`, so the error is
the CLI's own line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

from kexue import daemon, invoke
from kexue.errors import KexueError

# The daemon looks this many times per idle_seconds whether it has been idle that long.
IDLE_CHECKS = 10


@dataclasses.dataclass(frozen=True)
class Settings:
    """The `daemon` block of params.yaml."""

    idle_seconds: float  # exit after this long without a call
    start_timeout_seconds: float  # a first call waits this long for the daemon, then runs alone
    alias_cache_seconds: float  # a store other than local SQLite: a champion lookup holds this long


class Champions:
    """The version `champion` names, per registered model, read as cheaply as the store allows."""

    def __init__(self, tracking_uri: str, cache_seconds: float):
        local = tracking_uri.removeprefix("sqlite:///")
        self.database = Path(local) if local != tracking_uri else None
        self.cache_seconds = cache_seconds
        self.cached: dict[str, tuple[float, str | None]] = {}

    def version(self, name: str) -> str | None:
        if self.database is not None and self.database.is_file():
            with contextlib.suppress(LookupError, OSError, sqlite3.Error):  # MLflow then
                return self.read(name)
        return self.lookup(name)

    def read(self, name: str) -> str | None:
        """The alias row of MLflow's SQL store, read-only; LookupError if ambiguous."""
        database = sqlite3.connect(f"{self.database.resolve().as_uri()}?mode=ro", uri=True)
        with contextlib.closing(database):
            rows = database.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                (name, "champion"),
            ).fetchall()
        if len(rows) > 1:  # one per workspace: leave it to MLflow
            raise LookupError(name)
        return str(rows[0][0]) if rows else None

    def lookup(self, name: str) -> str | None:
        """MLflow's answer, held for `cache_seconds`."""
        import mlflow

        from kexue import registry

        held = self.cached.get(name)
        if held is not None and time.monotonic() - held[0] < self.cache_seconds:
            return held[1]
        try:
            version = registry._champion_version(mlflow.MlflowClient(), name)
        except mlflow.exceptions.MlflowException:
            return None  # the store fails: loading will say how, as the CLI does
        self.cached[name] = (time.monotonic(), version)
        return version


class Models:
    """The models the CLI's calls are answered from."""

    def __init__(self, slots: dict, champions: Champions):
        self.slots = slots  # kexue serve's: a champion loaded for one is loaded for both
        self.champions = champions
        self.by_source: dict[tuple, object] = {}
        self.lock = threading.Lock()
        self.params_seen: tuple | None = None

    def answer(self, request: dict) -> dict:
        return invoke.answer(self.model(request["model"], request["source"]), request)

    def model(self, name: str, source: str | None):
        if source is not None:
            return self.from_source(source)
        from kexue import registry

        slot = self.slot(name)
        version = self.champions.version(slot.registered_name)
        if version is not None:
            if slot.loaded is None or slot.loaded.version != version:
                slot.reload()
            loaded = slot.loaded
            if loaded is not None and loaded.version == version:
                return loaded.model
        # No champion, or it does not load (or moved meanwhile): as the CLI would.
        return invoke.load(registry.champion_uri(slot.registered_name))

    def slot(self, name: str):
        """The slot of model `name`, renewed when params.yaml registers it by another name."""
        from kexue import cli
        from kexue.serve.slots import Slot

        params = Path("params.yaml").stat()
        seen = (params.st_mtime_ns, params.st_size)
        if seen != self.params_seen:  # read params.yaml only when it changed
            with self.lock:
                for model, slot in list(self.slots.items()):
                    if slot.source is None and slot.registered_name != cli.registered_name(model):
                        self.slots[model] = Slot(model, cli.registered_name(model))
                self.params_seen = seen
        return self.slots[name]

    def from_source(self, source: str):
        mlmodel = Path(source) / "MLmodel"
        if mlmodel.is_file():
            key = (str(Path(source).resolve()), mlmodel.stat().st_mtime_ns)
        elif "@" in source:  # an alias: it can move
            return invoke.load(source)
        else:
            key = (source,)
        with self.lock:
            if key not in self.by_source:
                self.by_source[key] = invoke.load(source)
            return self.by_source[key]


class Idle:
    """When the last call ended, and how many are running."""

    def __init__(self):
        self.since = time.monotonic()
        self.running = 0

    @contextlib.contextmanager
    def call(self):
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self.since = time.monotonic()

    def seconds(self) -> float:
        return 0.0 if self.running else time.monotonic() - self.since


def call_app(models: Models):
    """The ASGI app of the CLI's route: 200 and the answer, 422 and the CLI's error line, 500
    when the daemon fails (the CLI then answers in process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from kexue.tracking import one_line

    def reply(body: dict, status: int = 200) -> Response:
        # json.dumps as kexue.invoke's records were parsed: NaN stays NaN, as in process.
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    async def call(request: Request) -> Response:
        try:
            answer = await asyncio.to_thread(models.answer, json.loads(await request.body()))
        except KexueError as err:
            return reply({"error": str(err)}, daemon.REFUSED)
        except Exception as err:  # a fault of the daemon's, not of the call
            return reply({"error": one_line(f"{type(err).__name__}: {err}")}, daemon.FAILED)
        return reply(answer)

    return Starlette(routes=[Route(daemon.CALL_ROUTE, call, methods=["POST"])])


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at `path` that only this user can open (mode 0600)."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # created 0600: no moment when others could connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen()
    return listener


def run() -> None:
    """Serve the project in the current folder on its socket until idle or SIGTERM."""
    import uvicorn

    from kexue import io
    from kexue import params as project_params
    from kexue.models import MODELS
    from kexue.serve.app import Settings as ServeSettings
    from kexue.serve.app import create_app
    from kexue.serve.slots import make_slots
    from kexue.tracking import project_root, tracking_uri

    root = project_root()
    running = daemon.read_state()
    if running is not None and daemon.alive(running["pid"]):
        raise KexueError(f"a daemon (pid {running['pid']}) serves this folder already")
    loaded = project_params.load(root / "params.yaml")
    settings = project_params.parse(Settings, project_params.block(loaded, "daemon"), "daemon")
    served = project_params.parse(ServeSettings, project_params.block(loaded, "serve"), "serve")
    # Calls check the champion themselves: no polling, nothing loaded before it is asked for.
    served = dataclasses.replace(served, poll_seconds=0, preload=False)
    slots = make_slots(list(MODELS), {})
    serve_app = create_app(slots, served)
    calls = call_app(Models(slots, Champions(tracking_uri(), settings.alias_cache_seconds)))
    idle = Idle()

    async def app(scope, receive, send):
        if scope["type"] != "http":  # lifespan: the serve app's
            return await serve_app(scope, receive, send)
        with idle.call():
            target = calls if scope["path"] == daemon.CALL_ROUTE else serve_app
            await target(scope, receive, send)

    path = daemon.socket_path(root)
    listener = bind(path)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=_exit_when_idle, args=(server, idle, settings), daemon=True).start()
    state = {"pid": os.getpid(), "socket": str(path), **daemon.identity()}
    # SIGTERM ends the process through the `finally` below: uvicorn stops on it, then raises
    # it again once it has, with the handler it found in place.
    signal.signal(signal.SIGTERM, _exit)
    io.write_json(daemon.state_file(), state)  # the socket listens: callers may connect
    try:
        server.run(sockets=[listener])
    finally:  # unless a newer daemon took over the project meanwhile
        left = daemon.read_state()
        if left == state:
            daemon.state_file().unlink(missing_ok=True)
        if left in (state, None):
            path.unlink(missing_ok=True)


def _exit(signum, frame) -> None:
    sys.exit(0)


def _exit_when_idle(server, idle: Idle, settings: Settings) -> None:
    while idle.seconds() < settings.idle_seconds:
        time.sleep(settings.idle_seconds / IDLE_CHECKS)
    server.should_exit = True
