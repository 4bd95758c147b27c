"""The one place that talks to MLflow: runs, metrics, artifacts, registered models.

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

CHAMPION = "champion"
# How the store says a registered model (RESOURCE_DOES_NOT_EXIST) or its alias
# (INVALID_PARAMETER_VALUE) is not there; any other error is the store failing.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
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
def _store(action: str) -> Iterator[None]:
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
    return _one_line(said or str(err))


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


def _one_line(text: str) -> str:
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
    with _store(f"starting run {name}"):
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
    with _store(f"ending run {name}"):
        mlflow.end_run()


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        with _store("logging metrics"):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, folder: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        with _store(f"logging artifact {Path(path).name}"):
            mlflow.log_artifact(str(path), artifact_path=folder)


def register_model(
    model_info: Any,
    name: str,
    description: str,
    score_name: str,
    score: float,
    tags: dict[str, str],
) -> tuple[str, bool]:
    """Register a logged model version; move `champion` to it if its score is at least the
    current champion's. Returns (version, became_champion).

    Moving the alias is the last write: a registration the store breaks off before it is
    withdrawn (as far as the store still answers), so no version is left that should be
    champion and is not; the error says what could not be undone."""
    import mlflow

    client = mlflow.MlflowClient()
    with _store(f"reading the champion of {name}"):
        champion_score = _champion_score(client, name, score_name)
        is_new = not client.search_registered_models(filter_string=f"name = '{name}'")
    promote = champion_score is None or score >= champion_score
    version = None
    try:
        with _store(f"registering {name}"):
            version = mlflow.register_model(
                model_info.model_uri, name, tags={**tags, score_name: str(score)}
            ).version
            client.update_registered_model(name, description=description)
            if promote:
                client.set_registered_model_alias(name, CHAMPION, version)
    except TrackingError as err:
        raise TrackingError(f"{err}; {_withdraw(client, name, version, is_new)}") from None
    return str(version), promote


def _withdraw(client, name: str, version: str | None, is_new: bool) -> str:
    """Undo a half-done registration as far as the store lets; say what is left."""
    import mlflow

    try:
        if version is not None:
            client.delete_model_version(name, version)
        if is_new:
            client.delete_registered_model(name)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code in _NOT_FOUND:
            return "nothing was registered"
        left = f"version {version} of {name}" if version is not None else f"model {name}"
        return f"{left} may be left half registered: delete it once the store is back"
    return "nothing was registered"


def _champion_score(client, name: str, score_name: str) -> float | None:
    import mlflow

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code in _NOT_FOUND:
            return None
        raise
    value = champion.tags.get(score_name)
    return float(value) if value is not None else None


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def pip_requirements() -> list[str]:
    """The served model's environment: this project's runtime dependencies, pinned as installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = []
    for spec in metadata.requires("kexue") or []:
        requirement = Requirement(spec)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            pins.append(f"{requirement.name}=={metadata.version(requirement.name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def export_pyfunc(out_dir: Path, model_kwargs: dict[str, Any]) -> Any:
    """Save a pyfunc model to `out_dir` (atomically) and log the same model to the active run."""
    import shutil
    import tempfile

    import mlflow

    import kexue

    kwargs = {
        **model_kwargs,
        "code_paths": [str(Path(kexue.__file__).parent)],
        "pip_requirements": pip_requirements(),
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        mlflow.pyfunc.save_model(path=str(staging / "model"), **kwargs)
        shutil.rmtree(out_dir, ignore_errors=True)
        (staging / "model").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with _store("logging the model"):
        return mlflow.pyfunc.log_model(name="model", **kwargs)
