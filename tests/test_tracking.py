"""MLflow for real: a SQLite store, runs with tags, registry aliases, a pyfunc loaded back."""

import dataclasses
import hashlib
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import assert_exported_with_example, export_crf

from kexue import io, registry, tracking, training
from kexue.errors import DataError, ExportError
from kexue.models import crf
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


def test_inputs_are_logged_as_datasets_with_sha256_and_rows_of_their_kind(mlflow_store, tmp_path):
    data = tmp_path / "data"
    (data / "images" / "a").mkdir(parents=True)
    (data / "images" / "b").mkdir()
    (data / "train.txt").write_text("我们 喜欢\n北京\n公园")  # the last line has no newline
    (data / "train.tsv").write_text("1\t好\n0\t差\n")
    (data / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    (data / "train.csv").write_text("t,x1,x2\n0,1,2\n10,3,4\n")
    (data / "test.csv").write_text("t,x1,x2\n")  # header only: no rows
    np.savez(data / "pairs.npz", x=np.zeros((4, 2, 3)), y=np.zeros((4, 2)))
    for image in ("a/1.png", "a/2.png", "b/3.png"):
        (data / "images" / image).write_bytes(b"png")
    (data / "vocab.json").write_text('{"tokens": ["<pad>", "<unk>"]}')
    kinds = ["train.txt", "train.tsv", "train.jsonl", "train.csv", "test.csv", "pairs.npz"]
    inputs = [(name.split(".")[0], data / name) for name in kinds]
    inputs += [("train", data / "images"), ("vocabulary", "data/vocab.json")]
    with tracking.stage_run("crf", "train", {}, data_hash="h") as run:
        tracking.log_inputs(inputs)
    logged = {}
    for item in mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs:
        context = {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]
        source = json.loads(item.dataset.source)["uri"]
        profile = json.loads(item.dataset.profile)
        logged[source] = (context, item.dataset.name, item.dataset.digest, profile)
    rows = {source: profile.get("num_rows") for source, (*_, profile) in logged.items()}
    assert rows == {  # relative to the working folder (the project)
        "data/train.txt": 3,
        "data/train.tsv": 2,
        "data/train.jsonl": 3,
        "data/train.csv": 2,
        "data/test.csv": 0,
        "data/pairs.npz": 4,
        "data/images": 3,
        "data/vocab.json": None,
    }
    context, name, digest, profile = logged["data/train.txt"]
    file_sha256 = hashlib.sha256((data / "train.txt").read_bytes()).hexdigest()
    assert (context, name, digest, profile["sha256"]) == (
        "train",
        "data/train.txt",
        file_sha256[:36],  # the most MLflow keeps
        file_sha256,
    )
    assert logged["data/images"][3]["sha256"] == io.hash_paths([data / "images"])
    with (
        pytest.raises(DataError, match=r"missing\.txt: not found"),
        tracking.stage_run("crf", "train", {}, data_hash="h"),
    ):
        tracking.log_inputs([("train", data / "missing.txt")])


def test_runs_in_a_dvc_experiment_name_it_and_the_hash_of_its_params(mlflow_store, monkeypatch):
    params = Path("params.yaml")
    params.write_text("crf:\n  train:\n    epochs: 7\n")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with tracking.stage_run("crf", "train", {}, data_hash="h") as plain:
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-epochs")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abcd" * 5)
    with tracking.stage_run("crf", "train", {}, data_hash="h") as experiment:
        pass
    client = mlflow.MlflowClient()
    tags = client.get_run(experiment.info.run_id).data.tags
    assert tags["dvc.exp.name"] == "tiny-epochs"
    assert tags["dvc.exp.baseline"] == "0123abcd" * 5
    assert tags["params.sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()
    assert "dvc.exp.name" not in client.get_run(plain.info.run_id).data.tags


def test_the_experiment_is_described_and_its_description_kept_current(mlflow_store):
    with tracking.stage_run("crf", "train", {}, data_hash="h", description="first words"):
        pass
    with tracking.stage_run("crf", "evaluate", {}, data_hash="h", description="better words"):
        pass
    with tracking.stage_run("crf", "export", {}, data_hash="h"):  # no description: kept
        pass
    experiment = mlflow.MlflowClient().get_experiment_by_name("kexue-crf")
    assert experiment.tags["mlflow.note.content"] == "better words"  # the UI's description


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
