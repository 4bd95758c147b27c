"""The one place that talks to MLflow about runs: the store, runs, params, metrics, artifacts,
the datasets a run read and the tags that tie a registered version to the runs, data and code
that made it. Registered models and their aliases live in `kexue.registry`.

Default store: `sqlite:///<project>/mlruns.db` with artifacts in `<project>/mlartifacts`.
`MLFLOW_TRACKING_URI` points everything at a team's server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import urllib.parse
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kexue import io
from kexue.errors import DataError, TrackingError

# dvc exp run --temp / --queue copies the repo to <project>/.dvc/tmp/exps/<run>/: runs made
# there must still land in the project's own store, not in the copy that DVC deletes.
_DVC_EXPS = (".dvc", "tmp", "exps")
# What `dvc exp run` sets in its stages' environment (dvc/env.py).
DVC_EXP_NAME, DVC_EXP_BASELINE_REV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"

UNKNOWN = "unknown"
DESCRIPTION_TAG = "mlflow.note.content"  # MLflow shows this experiment tag as its description
PARAMS_TAG = "params.sha256"
EXP_NAME_TAG, EXP_BASELINE_TAG = "dvc.exp.name", "dvc.exp.baseline"
# A train run's tag: the sha256 of the model file it wrote; an evaluate run's: of the metrics
# file. A later stage finds the run that made the file it reads by its content, also when DVC
# restored the file from its run cache instead of running the stage.
MODEL_FILE_TAG, METRICS_FILE_TAG = "model_file.sha256", "metrics_file.sha256"
# A registered version's tags (and its export run's): the ids of the runs that made it.
RUN_ID_TAGS = {stage: f"{stage}.run_id" for stage in ("train", "evaluate", "export")}


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
            with _creating(_sqlite_file(uri)):
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
def _creating(database: Path | None) -> Iterator[None]:
    """Hold a lock beside a SQLite store's file while MLflow opens it: the first opening
    creates the schema, and two processes creating it at once break it for good (`kexue
    repro` branches, two `dvc repro` side by side). Any other store: no lock."""
    if database is None:
        yield
        return
    from filelock import FileLock

    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(f"{database.name}.lock")):
        yield


# SQLite lets one writer in at a time. MLflow waits up to 20 s for the lock (its busy
# timeout), but SQLite refuses at once a write that could deadlock; MLflow has rolled that
# call back, so it is made again after a pause that doubles each time.
LOCKED_RETRIES = 6
LOCKED_FIRST_PAUSE = 0.25  # seconds: 15.75 s of pauses in all


def retried(call: Any, *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`, one MLflow store call, made again while the store answers
    "database is locked"."""
    import mlflow

    attempt = 0
    while True:
        try:
            return call(*args, **kwargs)
        except mlflow.exceptions.MlflowException as err:
            if not _locked(err) or attempt == LOCKED_RETRIES:
                raise
        time.sleep(LOCKED_FIRST_PAUSE * 2**attempt)
        attempt += 1


def _locked(err: Exception) -> bool:
    return "database is locked" in str(err)


def _end_run(mlflow, status: str) -> None:
    """End the active run, `retried`: MLflow's end_run forgets the run before it writes its
    status, so a refusal is retried on the run itself."""
    run_id = mlflow.active_run().info.run_id
    try:
        mlflow.end_run(status)
    except mlflow.exceptions.MlflowException as err:
        if not _locked(err):
            raise
        retried(mlflow.MlflowClient().set_terminated, run_id, status)


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


def _experiment_id(mlflow, name: str, description: str | None) -> str:
    """The experiment's id, created if new; its description set to `description` if given."""
    experiment = retried(mlflow.get_experiment_by_name, name)
    if experiment is None:
        try:
            return _create_experiment(mlflow, name, description)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another process (a branch of `kexue repro`) created it since we looked.
            experiment = retried(mlflow.get_experiment_by_name, name)
    if description and experiment.tags.get(DESCRIPTION_TAG) != description:
        retried(
            mlflow.MlflowClient().set_experiment_tag,
            experiment.experiment_id,
            DESCRIPTION_TAG,
            description,
        )
    return experiment.experiment_id


def _create_experiment(mlflow, name: str, description: str | None) -> str:
    location = None
    store = _sqlite_file(tracking_uri())
    if store is not None:
        # Artifacts beside the database, so a store in a temp folder keeps its files there too.
        location = (store.parent / "mlartifacts" / name).as_uri()
    tags = {DESCRIPTION_TAG: description} if description else None
    return retried(mlflow.create_experiment, name, artifact_location=location, tags=tags)


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
    return result.stdout.strip() if result.returncode == 0 else UNKNOWN


SOURCES_TAG = "data.sources"


def source_tags(data_dir: str | os.PathLike) -> dict[str, str]:
    """The version tag naming the data its prepared folder was made from, {input: sha256} as
    JSON (the folder's sources.json): a user's own file is named with its digest."""

    sources = io.read_sources(data_dir)
    return {SOURCES_TAG: json.dumps(sources, sort_keys=True)} if sources else {}


def provenance() -> dict[str, str]:
    """Tags naming the code and params a run ran with: the git commit, the sha256 of the
    params.yaml it read and, inside `dvc exp run`, the experiment's name and baseline commit:
    there HEAD is the baseline, whose params are not the experiment's."""
    tags = {"git.commit": git_commit()}
    params_file = Path("params.yaml")  # the stages' own: DVC runs them in the workspace
    if params_file.is_file():
        tags[PARAMS_TAG] = io.sha256(params_file)
    if experiment := os.environ.get(DVC_EXP_NAME):
        tags[EXP_NAME_TAG] = experiment
        tags[EXP_BASELINE_TAG] = os.environ.get(DVC_EXP_BASELINE_REV, UNKNOWN)
    return tags


@contextlib.contextmanager
def stage_run(
    model: str,
    stage: str,
    params: dict[str, Any],
    data_hash: str,
    description: str | None = None,
) -> Iterator[Any]:
    """One MLflow run for one DVC stage, in experiment `kexue-<model>` (described by
    `description`: the post, the task, the data)."""
    mlflow = connect()
    tags = {
        "kexue.model": model,
        "dvc.stage": f"{stage}_{model}",
        "data.sha256": data_hash,
        **provenance(),
    }
    name = f"{stage}_{model}"
    with store(f"starting run {name}"):
        experiment_id = _experiment_id(mlflow, f"kexue-{model}", description)
        run = retried(mlflow.start_run, experiment_id=experiment_id, run_name=name, tags=tags)
        retried(mlflow.log_params, {k: str(v)[:500] for k, v in params.items()})
    try:
        yield run
    except BaseException:
        # The store may be what failed: marking the run FAILED is worth one try, no more.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            _end_run(mlflow, "FAILED")
        raise
    with store(f"ending run {name}"):
        _end_run(mlflow, "FINISHED")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        with store("logging metrics"):
            retried(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, folder: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        with store(f"logging artifact {Path(path).name}"):
            mlflow.log_artifact(str(path), artifact_path=folder)


# MLflow keeps at most 36 characters of a dataset's digest: the sha256's first 36 hex digits
# (the whole sha256 is in the dataset's profile).
DIGEST_CHARS = 36
# Text files hold one record a line; a CSV's first line is its header (csv.DictReader's).
LINE_FILES = {".txt": 0, ".tsv": 0, ".jsonl": 0, ".csv": 1}  # suffix: header lines


def log_inputs(inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Log each (context, file or folder) the active run reads as an MLflow dataset: named
    `<folder>/<name>`, its source the path relative to the working folder (the project, where
    DVC runs the stages), its digest the sha256 of its bytes (a folder's: of its files' names
    and bytes) and its rows (see `_measure`). Each file is read once."""
    import mlflow

    if mlflow.active_run() is None:
        return
    datasets = [(context, _dataset(Path(path))) for context, path in inputs]
    if not datasets:
        return
    with store("logging the run's input datasets"):
        retried(
            mlflow.log_inputs,
            datasets=[dataset for _, dataset in datasets],
            contexts=[context for context, _ in datasets],
            tags_list=[None] * len(datasets),
        )


def _dataset(path: Path) -> Any:
    # MLflow is imported where used: stages that log nothing (fetch) start without it.
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    class FileDataset(MetaDataset):
        """A dataset known by its file: source, digest and a profile (sha256, rows)."""

        def __init__(self, source, name: str, digest: str, profile: dict[str, Any]):
            self._profile = profile
            super().__init__(source=source, name=name, digest=digest)

        @property
        def profile(self) -> dict[str, Any]:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    sha256, rows = _measure(path)
    profile = {"sha256": sha256} if rows is None else {"sha256": sha256, "num_rows": rows}
    source = LocalArtifactDatasetSource(_relative(path))
    return FileDataset(source, f"{path.parent.name}/{path.name}", sha256[:DIGEST_CHARS], profile)


def _relative(path: Path) -> str:
    """`path` relative to the working folder if inside it, else absolute (links kept: a file
    DVC linked from its cache is named where the stage read it)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(Path.cwd())).as_posix()
    except ValueError:
        return absolute.as_posix()


def _measure(path: Path) -> tuple[str, int | None]:
    """(sha256, rows) of a file or folder, reading it once. Rows: a text file's records (its
    lines, a CSV's header excepted), an .npz or .npy file's length of its arrays' first axis,
    a folder's files (images); None for any other kind."""
    if not path.exists():
        raise DataError(f"{path}: not found; expected a file or folder the run reads")
    if path.is_dir():
        return io.hash_paths([path]), sum(1 for f in path.rglob("*") if f.is_file())
    digest, newlines, last = hashlib.sha256(), 0, b"\n"
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            newlines += block.count(b"\n")
            last = block[-1:]
    suffix = path.suffix.lower()
    rows = None
    if suffix in LINE_FILES:
        lines = newlines + (last != b"\n")  # a last line without its newline counts too
        rows = max(lines - LINE_FILES[suffix], 0)
    elif suffix in (".npz", ".npy"):
        rows = _array_rows(path)
    return digest.hexdigest(), rows


def _array_rows(path: Path) -> int | None:
    """The common length of the first axis of an .npy file's array or an .npz file's arrays,
    read from their headers alone; None when they differ or one is a scalar."""
    if path.suffix.lower() == ".npy":
        with path.open("rb") as handle:
            lengths = {_npy_length(handle)}
    else:
        with zipfile.ZipFile(path) as archive:
            lengths = set()
            for member in archive.namelist():
                with archive.open(member) as handle:
                    lengths.add(_npy_length(handle))
    return lengths.pop() if len(lengths) == 1 else None


def _npy_length(handle) -> int | None:
    import numpy as np

    version = np.lib.format.read_magic(handle)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape = read_header(handle)[0]
    return shape[0] if shape else None


def tag_output(tag: str, path: str | os.PathLike) -> None:
    """Tag the active run with the sha256 of a file it wrote (`MODEL_FILE_TAG`,
    `METRICS_FILE_TAG`): the last thing a stage does, so a tagged run finished its outputs."""
    import mlflow

    if mlflow.active_run() is not None:
        with store(f"tagging the run with {tag}"):
            retried(mlflow.set_tag, tag, io.sha256(path))


def run_that_wrote(model: str, tag: str, path: str | os.PathLike) -> str:
    """The id of the newest finished run of experiment `kexue-<model>` tagged (`tag_output`)
    with the sha256 of `path`; "unknown" if there is none (the store was wiped since)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(f"kexue-{model}")
    if experiment is None:
        return UNKNOWN
    wrote = f"tags.`{tag}` = '{io.sha256(path)}'"
    runs = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"{wrote} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else UNKNOWN


def lineage_tags(
    model: str, model_file: str | os.PathLike, metrics_file: str | os.PathLike
) -> dict[str, str]:
    """The tags of a version the active (export) run registers: the ids of the train run that
    wrote `model_file`, the evaluate run that wrote `metrics_file` and the export run, and the
    code and params (`provenance`). The export run is tagged with its train and evaluate runs.
    """
    import mlflow

    active = mlflow.active_run()
    with store("finding the runs that made the model"):
        made_by = {
            RUN_ID_TAGS["train"]: run_that_wrote(model, MODEL_FILE_TAG, model_file),
            RUN_ID_TAGS["evaluate"]: run_that_wrote(model, METRICS_FILE_TAG, metrics_file),
        }
        if active is not None:
            retried(mlflow.set_tags, made_by)
    made_by[RUN_ID_TAGS["export"]] = active.info.run_id if active is not None else UNKNOWN
    return {**made_by, **provenance()}
