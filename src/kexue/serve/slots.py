"""One slot per served model: what it serves (a registry alias, a version or a folder), the
loaded pyfunc, and its reload, which loads the new version before swapping it in, so a
request in flight finishes on the model it started with."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kexue import registry, tracking
from kexue.tracking import RUN_ID_TAGS, one_line


@dataclass(frozen=True)
class Loaded:
    """A loaded model and what `GET /models` says about it."""

    model: Any  # mlflow.pyfunc.PyFuncModel
    input_schema: Any  # what MLflow's scoring server parses a request with
    uri: str
    version: str | None  # None for a folder
    metrics: dict[str, float]
    trained: str | None  # ISO time the train run ended (else the version's registration)


@dataclass
class Slot:
    """Model `model`, registered as `registered_name`, served from `source` (None: the
    champion, followed on reload)."""

    model: str
    registered_name: str
    source: str | None = None
    loaded: Loaded | None = None
    error: str | None = None  # why it is unavailable
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self) -> Loaded:
        """The loaded model, loading it on first use; LookupError when it cannot load."""
        loaded = self.loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self.loaded is None:
                self._load()
        if self.loaded is None:
            raise LookupError(self.error)
        return self.loaded

    def reload(self) -> bool:
        """Load what the source names now, if it is not what is served; True if it changed.
        A failed load keeps the model being served (its error is kept for `describe`)."""
        with self._lock:
            served = self.loaded
            try:
                uri, version = self._resolve()
            except LookupError as err:
                self.error = str(err)
                return False
            if served is not None and (served.uri, served.version) == (uri, version):
                return False
            self._load()
            return self.loaded is not served

    def describe(self) -> dict[str, Any]:
        loaded = self.loaded
        entry = {"model": self.model, "registered_name": self.registered_name}
        if loaded is None:
            return {**entry, "loaded": False, "available": self.error is None, "error": self.error}
        return {
            **entry,
            "loaded": True,
            "available": True,
            "uri": loaded.uri,
            "version": loaded.version,
            "metrics": loaded.metrics,
            "trained": loaded.trained,
            "reload_error": self.error,
        }

    def _resolve(self) -> tuple[str, str | None]:
        """(URI, registered version or None) of what to serve now."""
        import mlflow

        if self.source is not None and not self.source.startswith("models:/"):
            return self.source, None
        client = mlflow.MlflowClient()
        try:
            if self.source is None:
                found = client.get_model_version_by_alias(self.registered_name, registry.CHAMPION)
                return registry.version_uri(self.registered_name, found.version), str(found.version)
            name, _, version = self.source.removeprefix("models:/").partition("/")
            return self.source, str(client.get_model_version(name, version).version)
        except mlflow.exceptions.MlflowException as err:
            what = self.source or registry.champion_uri(self.registered_name)
            raise LookupError(f"{what}: {one_line(err.message)}") from None

    def _load(self) -> None:
        """Load what `_resolve` names and swap it in; on failure keep the old and say why."""
        import mlflow

        try:
            uri, version = self._resolve()
            model = mlflow.pyfunc.load_model(uri)
        except LookupError as err:
            self.error = str(err)
            return
        except Exception as err:  # a broken folder or artifact: this model only is unavailable
            self.error = f"{self.source or self.registered_name}: {one_line(str(err))}"
            return
        metrics, trained = _provenance(model.metadata.run_id, self.registered_name, version)
        self.loaded = Loaded(
            model, model.metadata.get_input_schema(), uri, version, metrics, trained
        )
        self.error = None


def _provenance(run_id: str | None, name: str, version: str | None) -> tuple[dict, str | None]:
    """The test metrics the export run logged and when the train run ended (else when the
    version was registered); empty when the store does not know the run."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
        train_id = run.data.tags.get(RUN_ID_TAGS["train"])
        ended = client.get_run(train_id).info.end_time if train_id else None
        if ended is None and version is not None:
            ended = client.get_model_version(name, version).creation_timestamp
    except (mlflow.exceptions.MlflowException, TypeError):
        return {}, None
    when = None if ended is None else datetime.fromtimestamp(ended / 1000, UTC).isoformat()
    return dict(run.data.metrics), when


def make_slots(models: list[str], sources: dict[str, str]) -> dict[str, Slot]:
    """A slot per model, following its champion unless `sources` names a URI or folder."""
    from kexue.cli import registered_name

    tracking.connect()
    return {m: Slot(m, registered_name(m), sources.get(m)) for m in models}
