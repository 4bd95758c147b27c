"""MLflow for real: a SQLite store, runs with tags, registry aliases, a pyfunc loaded back."""

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import export_crf

from kexue import registry, tracking, training
from kexue.servers import free_port


def test_export_registers_a_described_version_from_a_tagged_run(
    trained_crf, mlflow_store, tmp_path
):
    run, version, crowned = export_crf(trained_crf, tmp_path / "v1", score=0.90)
    assert (version, crowned) == ("1", True)  # the first version: no champion to beat
    client = mlflow.MlflowClient()
    assert "word segmenter" in client.get_registered_model("kexue-crf").description
    assert client.get_model_version("kexue-crf", "1").tags["f1"] == "0.9"
    tags = client.get_run(run.info.run_id).data.tags
    assert (
        tags["dvc.stage"] == "export_crf" and tags["data.sha256"] == "abc" and "git.commit" in tags
    )


def test_runs_log_params_and_per_epoch_metrics(mlflow_store):
    with tracking.stage_run("crf", "train", {"crf.train.epochs": 2}, data_hash="h") as run:
        for epoch, loss in enumerate([3.0, 2.0], start=1):
            tracking.log_metrics({"loss": loss}, step=epoch)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0)]
    assert client.get_run(run.info.run_id).data.params["crf.train.epochs"] == "2"
    experiment = client.get_experiment_by_name("kexue-crf")
    assert experiment.artifact_location.endswith("mlartifacts/kexue-crf")


def test_a_later_training_phase_continues_the_runs_curve(mlflow_store, tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = (np.ones((4, 1)), np.ones((4, 1)))
    with tracking.stage_run("dogs", "train", {}, data_hash="h") as run:
        for phase, (epochs, before) in enumerate([(2, 0), (3, 2)]):
            curves, backup = tmp_path / f"{phase}.csv", tmp_path / f"backup{phase}"
            dataset = tf.data.Dataset.from_tensor_slices(data).batch(2)
            training.fit(model, dataset, None, epochs, curves, backup, epochs_before=before)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert (tmp_path / "1.csv").read_text().splitlines()[-1].startswith("3,")  # own epochs


def test_artifacts_stay_beside_a_sqlite_store_anywhere(tmp_path, monkeypatch):
    store = tmp_path / "store" / "runs.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with tracking.stage_run("crf", "train", {}, data_hash="h"):
        tracking.log_metrics({"loss": 1.0})
    experiment = mlflow.MlflowClient().get_experiment_by_name("kexue-crf")
    assert experiment.artifact_location == (store.parent / "mlartifacts" / "kexue-crf").as_uri()


def test_default_store_is_the_project_even_inside_a_dvc_temp_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert tracking.project_root() == (tmp_path / "project").resolve()
    assert tracking.tracking_uri() == f"sqlite:///{(tmp_path / 'project').resolve()}/mlruns.db"


def test_unreachable_server_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        tracking.TrackingError,
        match=r"MLflow tracking store http://127\.0\.0\.1:\d+ is not reachable",
    ):
        tracking.connect()


def test_pyfunc_loads_back_and_answers_raw_text(trained_crf, tmp_path, mlflow_store):
    export_crf(trained_crf, tmp_path / "pyfunc", score=0.9)
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    out = model.predict(pd.DataFrame({"text": ["我们喜欢北京公园。", ""]}))
    assert out["words"].tolist() == [["我们", "喜欢", "北京", "公园", "。"], []]
    champion = mlflow.pyfunc.load_model(registry.champion_uri("kexue-crf"))
    assert champion.predict(pd.DataFrame({"text": ["散步"]}))["words"].tolist() == [["散步"]]
    with pytest.raises(mlflow.exceptions.MlflowException):
        model.predict(pd.DataFrame({"text": [12]}))
