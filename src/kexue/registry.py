"""Models in MLflow's registry: the pyfunc a stage exports, its registered versions and the
`champion` alias that the CLI and the server follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kexue.errors import ExportError, TrackingError
from kexue.tracking import one_line, store

CHAMPION = "champion"
# How the store says a registered model (RESOURCE_DOES_NOT_EXIST) or its alias
# (INVALID_PARAMETER_VALUE) is not there; any other error is the store failing.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


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
    with store(f"reading the champion of {name}"):
        champion_score = _champion_score(client, name, score_name)
        is_new = not client.search_registered_models(filter_string=f"name = '{name}'")
    promote = champion_score is None or score >= champion_score
    version = None
    try:
        with store(f"registering {name}"):
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
    """Save a pyfunc model to `out_dir` (atomically) and log the same model to the active run.

    The model must come with a signature and an input example. Saving checks the example
    against the signature; then the saved serving example is scored through the saved model,
    so an example the model refuses fails the export before anything is logged (MLflow scores
    it again while logging, but only warns when that fails)."""
    import shutil
    import tempfile

    import mlflow

    import kexue

    missing = [key for key in ("signature", "input_example") if model_kwargs.get(key) is None]
    if missing:
        raise ExportError(
            f"cannot export the pyfunc to {out_dir}: it has no {' and no '.join(missing)}"
        )
    kwargs = {
        **model_kwargs,
        "code_paths": [str(Path(kexue.__file__).parent)],
        "pip_requirements": pip_requirements(),
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _save_checked(staging / "model", kwargs, out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        (staging / "model").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with store("logging the model"):
        return mlflow.pyfunc.log_model(name="model", **kwargs)


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
