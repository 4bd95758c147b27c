"""A team's tracking server for real: `mlflow server` on PostgreSQL, proxying the artifact
store, driven by `dvc repro` through MLFLOW_TRACKING_URI and checked through its REST API.
Then PostgreSQL is stopped in the middle of an export stage."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dvc_project import CRF_BRANCH, ENV, TINY_CRF, make_project, run, set_params, stages_run

from kexue import postgres
from kexue.servers import mlflow_server

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class TrackingServer:
    url: str
    database: postgres.Cluster
    artifacts: Path

    def get(self, endpoint: str, **query) -> dict:
        answer = requests.get(f"{self.url}/api/2.0/mlflow/{endpoint}", params=query, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def runs(self, experiment: str = "kexue-crf") -> dict[str, dict]:
        """The experiment's runs by id, newest first (none before the experiment exists)."""
        exists = requests.get(
            f"{self.url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": experiment},
            timeout=30,
        )
        if exists.status_code == 404:
            return {}
        exists.raise_for_status()
        found = exists.json()
        search = {"experiment_ids": [found["experiment"]["experiment_id"]]}
        answer = requests.post(f"{self.url}/api/2.0/mlflow/runs/search", json=search, timeout=30)
        answer.raise_for_status()
        return {run["info"]["run_id"]: run for run in answer.json().get("runs", [])}

    def download(self, artifact_uri: str) -> bytes:
        """A file through the server's artifact proxy (`mlflow-artifacts:/...`)."""
        path = artifact_uri.removeprefix("mlflow-artifacts:/")
        answer = requests.get(f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=30)
        answer.raise_for_status()
        return answer.content


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    logs = tmp_path_factory.mktemp("server_logs")
    artifacts = tmp_path_factory.mktemp("artifact_store")
    with (
        postgres.cluster(logs / "postgres.log") as database,
        mlflow_server(database.uri, logs / "mlflow.log", artifacts) as url,
    ):
        yield TrackingServer(url, database, artifacts)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("team"), TINY_CRF)


def by_name(runs: dict[str, dict]) -> dict[str, dict]:
    return {run["info"]["run_name"]: run for run in runs.values()}


def test_repro_logs_runs_metrics_artifacts_and_champion_to_the_server(server, repo):
    uses_server = {"MLFLOW_TRACKING_URI": server.url}
    result = run(repo, "dvc", "repro", "export_crf", env=uses_server)
    assert stages_run(result.stdout) == CRF_BRANCH

    runs = by_name(server.runs())
    assert set(runs) == {"train_crf", "evaluate_crf", "export_crf"}
    assert {run["info"]["status"] for run in runs.values()} == {"FINISHED"}
    train_id = runs["train_crf"]["info"]["run_id"]
    assert runs["train_crf"]["data"]["params"]  # params logged, tags too:
    tags = {tag["key"]: tag["value"] for tag in runs["train_crf"]["data"]["tags"]}
    assert tags["dvc.stage"] == "train_crf" and len(tags["data.sha256"]) == 64

    # The per-epoch curve on the server is the one DVC keeps as a plot.
    with (repo / "plots" / "crf" / "train.csv").open() as file:
        curve = [float(row["loss"]) for row in csv.DictReader(file)]
    history = server.get("metrics/get-history", run_id=train_id, metric_key="loss")["metrics"]
    assert [(m["step"], m["value"]) for m in history] == list(enumerate(curve, start=1))
    assert len(curve) == TINY_CRF["crf.train.epochs"]
    metrics = json.loads((repo / "metrics" / "crf.json").read_text())
    evaluated = {m["key"]: m["value"] for m in runs["evaluate_crf"]["data"]["metrics"]}
    assert evaluated["f1"] == pytest.approx(metrics["f1"]) and 0 < metrics["f1"] <= 1

    # Artifacts come back through the server, byte for byte; the client kept none.
    artifact_root = runs["train_crf"]["info"]["artifact_uri"]
    assert artifact_root.startswith("mlflow-artifacts:/")
    stored = server.download(f"{artifact_root}/plots/train.csv")
    assert stored == (repo / "plots" / "crf" / "train.csv").read_bytes()
    assert not (repo / "mlartifacts").exists() and not (repo / "mlruns.db").exists()

    # The registered model: version 1, champion, its files in the server's artifact store.
    champion = server.get("registered-models/alias", name="kexue-crf", alias="champion")
    version = champion["model_version"]
    assert version["version"] == "1" and version["run_id"] == runs["export_crf"]["info"]["run_id"]
    tagged = {tag["key"]: tag["value"] for tag in version["tags"]}
    assert float(tagged["f1"]) == pytest.approx(metrics["f1"])
    files = server.get("model-versions/get-download-uri", name="kexue-crf", version="1")
    mlmodel = server.download(f"{files['artifact_uri']}/MLmodel").decode()
    assert "python_function" in mlmodel
    assert list(server.artifacts.rglob("MLmodel"))  # written by the server, not by the client

    # A user elsewhere: the champion, downloaded through the server, segments a text.
    text = "我们喜欢北京公园。"
    segmented = run(repo, sys.executable, "-m", "kexue.cli", "segment", text, env=uses_server)
    assert "".join(segmented.stdout.split()) == text
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "built through the tracking server")


def wait_for_metric(server: TrackingServer, name: str, metric: str, known: set[str], stage):
    """Until a run `name`, not among `known`, has `metric` logged (or the stage ends)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and stage.poll() is None:
        new = [run for id, run in server.runs().items() if id not in known]
        if any(
            run["info"]["run_name"] == name
            and metric in {m["key"] for m in run["data"].get("metrics", [])}
            for run in new
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no new {name} run with {metric}; the stage exited: {stage.poll()}")


def test_database_stopped_mid_export_fails_the_stage_in_one_line_registering_nothing(server, repo):
    """The export stage is frozen once its run holds the test metrics, PostgreSQL stopped,
    the stage thawed while it looks up the runs that made the model or logs it (whichever it
    reached when frozen): it must fail in one line naming the server and
    the database, and leave no model version behind. With the database back, the same command
    registers a champion."""
    registered = "kexue-crf-stopped"
    set_params(repo, {"crf.registered_name": registered})  # a registry of its own
    # MLflow's own retries would ride out the outage for minutes: a user's knob, set to none.
    env = {**ENV, "MLFLOW_TRACKING_URI": server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    known = set(server.runs())
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    stage = subprocess.Popen(
        ["dvc", "repro", "export_crf"], cwd=repo, env=env, start_new_session=True, **pipes
    )
    try:
        wait_for_metric(server, "export_crf", "f1", known, stage)
        os.killpg(stage.pid, signal.SIGSTOP)
        server.database.stop()
        os.killpg(stage.pid, signal.SIGCONT)
        out, err = stage.communicate(timeout=300)
        server.database.start()
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
            stage.wait()

    assert stage.returncode != 0 and stages_run(out)[-1] == "export_crf"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert re.fullmatch(
        r"error: MLflow tracking store http://127\.0\.0\.1:\d+ failed while "
        r"(finding the runs that made the model|logging the model): "
        r"HTTP 503 TEMPORARILY_UNAVAILABLE: \(psycopg\.OperationalError\) connection failed: "
        rf'connection to server at "127\.0\.0\.1", port {server.database.port} failed: '
        r"Connection refused",
        errors[0],
    ), errors[0]
    assert server.get("registered-models/search", filter=f"name = '{registered}'") == {}
    assert server.get("model-versions/search", filter=f"name = '{registered}'") == {}

    # The database is back: nothing half-done stands in the way of the same command.
    result = run(repo, "dvc", "repro", "export_crf", env={"MLFLOW_TRACKING_URI": server.url})
    assert stages_run(result.stdout) == ["export_crf"]
    champion = server.get("registered-models/alias", name=registered, alias="champion")
    assert champion["model_version"]["version"] == "1"


def test_a_large_model_uploads_whole_through_the_artifact_proxy(server, tmp_path, monkeypatch):
    """The quick reachability check must not leave its short timeout and no-retry policy on
    the client: a model of many megabytes goes up through the proxy and comes back whole."""
    import hashlib

    import mlflow

    from kexue import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    weights = tmp_path / "model" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(64 << 20))
    with tracking.stage_run("upload", "export", {"size": "64 MiB"}, data_hash="x") as active:
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
        tracking.log_artifact(weights, "model")
    uri = f"{mlflow.get_run(active.info.run_id).info.artifact_uri}/model/weights.bin"
    arrived = server.download(uri)
    assert hashlib.sha256(arrived).digest() == hashlib.sha256(weights.read_bytes()).digest()
