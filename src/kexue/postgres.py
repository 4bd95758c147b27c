"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks: Debian's server
programs, a temp data folder, started and stopped (fast shutdown) as a process group."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kexue.servers import as_user, free_port, serve

DATABASE = "mlflow"
SUPERUSER = "kexue"
# PostgreSQL refuses to run as root; Debian's package creates this system user for it.
SYSTEM_USER = "postgres"


def server_bin() -> Path:
    """The folder of initdb/postgres: Debian keeps them off PATH, one folder per version."""
    installed = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    newest = max(installed, key=lambda p: [int(n) for n in p.parts[-3].split(".")], default=None)
    found = newest or (Path(path) if (path := shutil.which("initdb")) else None)
    if found is None:
        raise RuntimeError("PostgreSQL's initdb not found: install Debian's postgresql")
    return found.parent


class Cluster:
    """One initialised data folder, served on one loopback port: start, stop, start again."""

    def __init__(self, root: Path, log: Path):
        self.root, self.log, self.bin = root, log, server_bin()
        self.user = SYSTEM_USER if os.geteuid() == 0 else None
        self.port = free_port()
        self.uri = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"
        self._server = contextlib.ExitStack()

    def initdb(self) -> None:
        # Trust on loopback only: a throwaway cluster that lives as long as one test.
        command = [str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", SUPERUSER]
        command += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"]
        self._run(command)

    def start(self) -> None:
        command = [str(self.bin / "postgres"), "-D", str(self.root / "data")]
        command += ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.root)]
        self._server.enter_context(
            serve(command, self._accepts, self.log, stop_signal=signal.SIGINT, user=self.user)
        )

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, the data stays for the next start."""
        self._server.close()

    def create_database(self) -> None:
        self._run([str(self.bin / "createdb"), *self._address(), DATABASE])

    def _address(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]

    def _accepts(self) -> bool:
        command = [str(self.bin / "pg_isready"), "-q", *self._address()]
        return subprocess.run(command).returncode == 0

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, **as_user(self.user))
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")


@contextlib.contextmanager
def cluster(log: Path) -> Iterator[Cluster]:
    """A running cluster with an empty `mlflow` database; stopped and removed after.

    Its folder is a fresh temp folder (pytest's are root's alone) owned by the user
    PostgreSQL runs as."""
    root = Path(tempfile.mkdtemp(prefix="kexue-postgres-"))
    new = Cluster(root, log)
    try:
        if new.user is not None:
            shutil.chown(root, new.user, new.user)
        new.initdb()
        new.start()
        new.create_database()
        yield new
    finally:
        new.stop()
        shutil.rmtree(root, ignore_errors=True)
