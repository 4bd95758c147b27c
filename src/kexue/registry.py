"""Models in MLflow's registry: the pyfunc a stage exports, its registered versions and the
`champion` alias that the CLI and the server follow.

The champion is chosen on one test split at a time: an export scores the current champion
on the new version's test split, with the model's own `evaluate` (`score_on_split`), and
moves the alias only if the new version does at least as well there."""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from kexue import stats
from kexue.errors import DataError, ExportError, TrackingError
from kexue.tracking import one_line, project_root, store

CHAMPION = "champion"
# How the store says a registered model (RESOURCE_DOES_NOT_EXIST) or its alias
# (INVALID_PARAMETER_VALUE) is not there; any other error is the store failing.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
# Beside the project's default store, so exports from the project's DVC experiments share it.
LOCKS = (".kexue", "locks")


@dataclass(frozen=True)
class Challenge:
    """A new version's score against the champion's on the new version's test split."""

    score_name: str
    score: float
    champion: str | None = None  # the champion's version; None when there is none yet
    champion_score: float | None = None  # on this split; None when it cannot read it
    unreadable: str | None = None  # why the champion cannot read this split

    def verdict(self) -> tuple[bool, str]:
        """(whether the new version takes the alias, why). A score that is not a number
        (NaN) never wins; a champion whose score is not a number loses to any number."""
        if not math.isfinite(self.score):
            return False, f"{self.score_name} is {self.score}, which never takes the alias"
        if self.champion is None:
            return True, "no champion yet"
        if self.unreadable is not None:
            return True, (
                f"champion version {self.champion} cannot read this test split: {self.unreadable}"
            )
        if not math.isfinite(self.champion_score):
            return True, f"champion version {self.champion} scores {self.champion_score} here"
        lower = stats.lower_is_better(self.score_name)
        sign = -1 if lower else 1
        crowned = sign * self.score >= sign * self.champion_score
        if crowned:
            relation = "at most" if lower else "at least"
        else:
            relation = "above" if lower else "below"
        return crowned, (
            f"{self.score_name} {self.score!r} is {relation} champion version {self.champion}'s "
            f"{self.champion_score!r} on this test split"
        )

    def tags(self) -> dict[str, str]:
        """What was compared, for the new version's tags (its own score is `score_name`)."""
        if self.champion is None:
            champion_score = "none"
        elif self.unreadable is not None:
            champion_score = "unreadable"
        else:
            champion_score = repr(self.champion_score)
        return {
            "champion.version": self.champion or "none",
            "champion.score": champion_score,
            "champion.reason": self.verdict()[1],
        }


def register_model(
    model_info: Any,
    name: str,
    description: str,
    score_name: str,
    score: float,
    tags: dict[str, str],
    score_champion: Callable[[str], float],
) -> tuple[str, bool, str]:
    """Register a logged model version; move `champion` to it if its `score` is at least as
    good (`stats.lower_is_better`) as the champion's on the same test split. Returns
    (version, became_champion, why).

    `score_champion(model_uri)` is the champion's score on the new version's test split,
    computed as `score` was (`score_on_split`); it raises DataError when the
    champion cannot read that split, and then the new version takes the alias. The version
    is tagged with its `score_name` and with what it was compared to (`Challenge.tags`).

    Reading, scoring and replacing the champion happen under `champion_lock`: two exports
    cannot both take the alias from the same champion; the later compares with the earlier.

    Moving the alias is the last write: a registration the store breaks off before it is
    withdrawn (as far as the store still answers), so no version is left that should be
    champion and is not; the error says what could not be undone."""
    import mlflow

    client = mlflow.MlflowClient()
    with champion_lock(name):
        with store(f"reading the champion of {name}"):
            champion = _champion_version(client, name)
            is_new = not client.search_registered_models(filter_string=f"name = '{name}'")
        challenge = _challenge(name, champion, score_name, score, score_champion)
        crowned, reason = challenge.verdict()
        version = None
        try:
            with store(f"registering {name}"):
                version = mlflow.register_model(
                    model_info.model_uri,
                    name,
                    tags={**tags, score_name: str(score), **challenge.tags()},
                ).version
                client.update_registered_model(name, description=description)
                if crowned:
                    client.set_registered_model_alias(name, CHAMPION, version)
        except TrackingError as err:
            raise TrackingError(f"{err}; {_withdraw(client, name, version, is_new)}") from None
    return str(version), crowned, reason


def _challenge(
    name: str,
    champion: str | None,
    score_name: str,
    score: float,
    score_champion: Callable[[str], float],
) -> Challenge:
    if champion is None:
        return Challenge(score_name, score)
    try:
        champion_score = score_champion(version_uri(name, champion))
    except DataError as err:
        # The new version was scored on this very split: a data error is the champion's (a
        # class it never saw, a file an older version of the code did not save).
        return Challenge(score_name, score, champion, unreadable=str(err))
    return Challenge(score_name, score, champion, champion_score)


@contextlib.contextmanager
def champion_lock(name: str) -> Iterator[None]:
    """Exclusive hold of the champion of registered model `name` for an export run from
    this project, on this machine: a lock file in `<project>/.kexue/locks/` (the project as
    `tracking.project_root` finds it, so `dvc exp run --temp` and queued experiments share
    it). It cannot order exports from other project folders or machines that share one
    remote tracking server: MLflow's registry has no compare-and-set for an alias, so
    there, export one model from one place at a time."""
    from filelock import FileLock, Timeout

    folder = project_root().joinpath(*LOCKS)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another export of {name} to finish with its champion", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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


def _champion_version(client, name: str) -> str | None:
    import mlflow

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code in _NOT_FOUND:
            return None
        raise


def score_on_split(model_uri: str, module: ModuleType, config: Any, data_dir: Path) -> float:
    """`module.SCORE` of a registered version on the test split in `data_dir`: the module's
    own `evaluate` (as the evaluate stage ran it on the new version) on the version's pyfunc
    artifacts, its model file (`model`) and vocabulary (`vocab`, if it has one), without
    baselines; the plots `evaluate` also makes are dropped. Raises DataError when the
    version cannot read the split."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="kexue-champion-") as tmp:
        with store(f"downloading {model_uri}"):
            bundle = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        artifacts = _pyfunc_artifacts(bundle)
        _, scores = module.evaluate(
            config,
            data_dir,
            artifacts.get("vocab"),
            artifacts["model"].parent,
            Path(tmp) / "plots",
        )
    return stats.model_figure(scores, module.SCORE)


def _pyfunc_artifacts(bundle: Path) -> dict[str, Path]:
    """The files a saved pyfunc holds as artifacts, by the names its `pyfunc()` gave them."""
    from mlflow.models import Model

    listed = Model.load(bundle).flavors["python_function"].get("artifacts", {})
    return {key: bundle / entry["path"] for key, entry in listed.items()}


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


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
    """Save a pyfunc model to `out_dir` (atomically) and log the same model to the active run.

    The model must come with a signature and an input example. Saving checks the example
    against the signature; then the saved serving example is scored through the saved model,
    so an example the model refuses fails the export before anything is logged (MLflow scores
    it again while logging, but only warns when that fails). The model carries the project
    code its module imports and nothing else: the same files its DVC stages list, so the
    served code is the code that trained and evaluated it."""
    import shutil
    import tempfile

    import mlflow

    missing = [key for key in ("signature", "input_example") if model_kwargs.get(key) is None]
    if missing:
        raise ExportError(
            f"cannot export the pyfunc to {out_dir}: it has no {' and no '.join(missing)}"
        )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        kwargs = {
            **model_kwargs,
            "code_paths": [str(_copy_code(model_kwargs["python_model"], staging / "code"))],
            "pip_requirements": pip_requirements(),
        }
        _save_checked(staging / "model", kwargs, out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        (staging / "model").rename(out_dir)
        with store("logging the model"):
            return mlflow.pyfunc.log_model(name="model", **kwargs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_code(python_model: Any, folder: Path) -> Path:
    """A copy of the `kexue` package in `folder` holding only what the module that defines
    `python_model` imports."""
    import shutil

    import kexue
    from kexue.code_closure import module_bundle

    package_parent = Path(kexue.__file__).resolve().parent.parent
    for file in module_bundle(package_parent, type(python_model).__module__):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package_parent / file, folder / file)
    return folder / "kexue"


def _save_checked(path: Path, kwargs: dict[str, Any], out_dir: Path) -> None:
    """save_model to `path`, then score its serving example; a refusal is an ExportError."""
    import mlflow

    failed = f"cannot export the pyfunc to {out_dir}"
    try:
        mlflow.pyfunc.save_model(path=str(path), **kwargs)
    except mlflow.exceptions.MlflowException as err:
        raise ExportError(f"{failed}: {one_line(err.message)}") from None
    try:
        serving_example_predictions(path)
    except mlflow.exceptions.MlflowException as err:
        raise ExportError(
            f"{failed}: its serving input example does not score: {one_line(err.message)}"
        ) from None


def serving_example_predictions(model_dir: Path) -> Any:
    """What a saved pyfunc answers to its own `serving_input_example.json`, the request read
    as MLflow's scoring server reads one (the signature's schema parses the JSON)."""
    import json

    import mlflow
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    model = mlflow.pyfunc.load_model(str(model_dir))
    serving_input = model.metadata.get_serving_input(str(model_dir))
    if serving_input is None:
        raise ValueError(f"{model_dir} has no serving input example")
    request = json.loads(serving_input)
    params = request.pop("params", None)
    data = infer_and_parse_data(request, model.metadata.get_input_schema())
    return model.predict(data, params=params)
