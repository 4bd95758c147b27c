"""MLflow for real: a SQLite store, runs with tags, registry aliases, a pyfunc loaded back."""

import dataclasses

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import assert_exported_with_example, export_crf

from kexue import registry, tracking, training
from kexue.errors import ExportError
from kexue.models import crf
from kexue.servers import free_port


def test_champion_moves_only_to_a_version_at_least_as_good(trained_crf, mlflow_store, tmp_path):
    run, first, crowned = export_crf(trained_crf, tmp_path / "v1", score=0.90)
    assert (first, crowned) == ("1", True)
    assert export_crf(trained_crf, tmp_path / "v2", score=0.85)[1:] == ("2", False)
    assert export_crf(trained_crf, tmp_path / "v3", score=0.90)[1:] == ("3", True)

    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("kexue-crf", "champion").version) == "3"
    assert "word segmenter" in client.get_registered_model("kexue-crf").description
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


def test_the_logged_model_keeps_the_signature_and_the_input_example(
    trained_crf, tmp_path, mlflow_store
):
    export_crf(trained_crf, tmp_path / "pyfunc", score=0.9)
    assert_exported_with_example(tmp_path / "pyfunc")
    uri = registry.champion_uri("kexue-crf")
    logged = mlflow.models.get_model_info(uri)
    saved = mlflow.models.Model.load(str(tmp_path / "pyfunc"))
    assert logged.signature == saved.signature and logged.signature.inputs.input_names() == ["text"]
    assert logged.saved_input_example_info == saved.saved_input_example_info
    assert mlflow.models.Model.load(uri).load_input_example(uri).equals(crf.input_example())


def _without_example(kwargs: dict) -> dict:
    return {key: value for key, value in kwargs.items() if key != "input_example"}


def _refused_by_the_schema(kwargs: dict) -> dict:
    return {**kwargs, "input_example": pd.DataFrame({"words": ["我们"]})}


@pytest.mark.parametrize(
    ("change", "serve", "message"),
    [
        (_without_example, {}, r"cannot export the pyfunc to \S+: it has no input_example$"),
        (
            _refused_by_the_schema,
            {},
            r"example does not match the model signature.*missing inputs \['text'\]",
        ),
        (  # the model's own limit refuses its example
            dict,
            {"max_request_chars": 5},
            r"its serving input example does not score: input has 13 characters; the limit "
            r"per request is 5$",
        ),
    ],
    ids=["no-example", "not-the-signature", "refused-by-the-model"],
)
def test_a_model_without_an_example_or_refusing_it_is_not_exported(
    trained_crf, tmp_path, mlflow_store, change, serve, message
):
    config = trained_crf["config"]
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, **serve))
    kwargs = change(crf.pyfunc(config, trained_crf["vocab"], trained_crf["model_dir"]))
    previous = tmp_path / "pyfunc"
    previous.mkdir()
    (previous / "MLmodel").write_text("the previous export")
    with pytest.raises(ExportError, match=message), tracking.stage_run("crf", "export", {}, "h"):
        registry.export_pyfunc(previous, kwargs)
    assert list(tmp_path.glob("*pyfunc*")) == [previous]  # no staging folder left either
    assert (previous / "MLmodel").read_text() == "the previous export"
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    assert mlflow.search_logged_models(experiments, output_format="list") == []
