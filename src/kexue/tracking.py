"""The one place that talks to MLflow about runs: the store, runs, params, metrics, artifacts.
Registered models and their aliases live in `kexue.registry`.

Default store: `sqlite:///<project>/mlruns.db` with artifacts in `<project>/mlartifacts`.
`MLFLOW_TRACKING_URI` points everything at a team's server instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kexue.errors import TrackingError

# dvc exp run --temp / --queue copies the repo to <project>/.dvc/tmp/exps/<run>/: runs made
# there must still land in the project's own store, not in the copy that DVC deletes.
_DVC_EXPS = (".dvc", "tmp", "exps")


def project_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for parent in [here, *here.parents]:
        if parent.parts[-3:] == _DVC_EXPS:
            return parent.parent.parent.parent
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlruns.db'}"


def connect() -> Any:
    """Point MLflow at the store and check it answers, so a stage fails before training.

    A server is asked once, with a short timeout and no retries, by a request of our own:
    MLflow's client settings stay its defaults (minutes of timeouts and retries), which the
    uploads and downloads of large models through a remote server need."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        if uri.startswith(("http://", "https://")):
            _quick_check(uri)
        else:
            mlflow.search_experiments(max_results=1)
    except Exception as err:  # any transport or store failure means the same to the user
        raise TrackingError(
            f"MLflow tracking store {_redact(uri)} is not reachable: {_reason(uri, err)}"
        ) from None
    return mlflow


QUICK_CHECK_SECONDS = 10


def _quick_check(uri: str) -> None:
    """One search request to the server; raises on no answer or an error answer."""
    import requests

    search = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    requests.get(search, timeout=QUICK_CHECK_SECONDS).raise_for_status()


@contextlib.contextmanager
def store(action: str) -> Iterator[None]:
    """An MLflow failure inside becomes one line naming the store, the action and the cause
    (a server whose database went down, a refused request), not a traceback."""
    import mlflow

    try:
        yield
    except mlflow.exceptions.MlflowException as err:
        uri = tracking_uri()
        raise TrackingError(
            f"MLflow tracking store {_redact(uri)} failed while {action}: {_reason(uri, err)}"
        ) from None


def _reason(uri: str, err: Exception) -> str:
    """Why a store call failed, in one line. MLflow's client reports a server error it gave up
    retrying without the server's answer; ask the server once more for what it says."""
    said = _server_error(uri) if uri.startswith(("http://", "https://")) else None
    return one_line(said or str(err))


def _server_error(uri: str) -> str | None:
    import requests

    try:
        search = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
        answer = requests.get(search, timeout=QUICK_CHECK_SECONDS)
    except requests.RequestException as err:
        return str(err)
    if answer.ok:
        return None
    try:
        body = answer.json()
        return f"HTTP {answer.status_code} {body['error_code']}: {body['message'].splitlines()[0]}"
    except (ValueError, KeyError, TypeError, IndexError):
        return f"HTTP {answer.status_code}: {answer.text}"


def one_line(text: str) -> str:
    """A message as one line (MLflow's can run over many: a DataFrame, a schema)."""
    return " ".join(text.split())[:300]


def _redact(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def _experiment_id(mlflow, name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    store = _sqlite_file(tracking_uri())
    if store is not None:
        # Artifacts beside the database, so a store in a temp folder keeps its files there too.
        location = (store.parent / "mlartifacts" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI, None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    return Path(uri.removeprefix(prefix)).resolve()


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@contextlib.contextmanager
def stage_run(model: str, stage: str, params: dict[str, Any], data_hash: str) -> Iterator[Any]:
    """One MLflow run for one DVC stage, in experiment `kexue-<model>`."""
    mlflow = connect()
    tags = {
        "kexue.model": model,
        "dvc.stage": f"{stage}_{model}",
        "git.commit": git_commit(),
        "data.sha256": data_hash,
    }
    name = f"{stage}_{model}"
    with store(f"starting run {name}"):
        experiment_id = _experiment_id(mlflow, f"kexue-{model}")
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    try:
        yield run
    except BaseException:
        # The store may be what failed: marking the run FAILED is worth one try, no more.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.end_run("FAILED")
        raise
    with store(f"ending run {name}"):
        mlflow.end_run()


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        with store("logging metrics"):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, folder: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        with store(f"logging artifact {Path(path).name}"):
            mlflow.log_artifact(str(path), artifact_path=folder)
