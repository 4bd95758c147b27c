"""Lineage: from the champion version back to its runs, their datasets and the code, on a
real SQLite MLflow store, with the stages' own choice of inputs and tags."""

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, export_crf

from kexue import io, lineage, tracking
from kexue.models import crf


@pytest.fixture
def stages(monkeypatch):
    """The stage scripts' shared module, `_common`, as the stages import it."""
    monkeypatch.syspath_prepend(str(REPO / "stages"))
    import _common

    return _common


@pytest.fixture
def git_head(tmp_path):
    """The test's working folder as a git repository with one commit: its id."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], cwd=tmp_path, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    return head.stdout.strip()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_walk_finds_the_train_run_its_datasets_and_the_commit(
    trained_crf, mlflow_store, tmp_path, git_head, stages, capsys
):
    data, vocab = trained_crf["data"], trained_crf["vocab"]
    model_file = trained_crf["model_dir"] / crf.MODEL_FILE
    (tmp_path / "params.yaml").write_text("crf:\n  registered_name: kexue-crf\n")
    # An earlier training of another model file: not the run that made this one.
    other = tmp_path / "other.keras"
    other.write_bytes(b"another model")
    with tracking.stage_run("crf", "train", {}, "h", crf.DESCRIPTION):
        tracking.tag_output(tracking.MODEL_FILE_TAG, other)
    with tracking.stage_run("crf", "train", {}, "h", crf.DESCRIPTION) as train_run:
        tracking.log_inputs(stages.data_inputs(data, vocab, training=True))
        tracking.tag_output(tracking.MODEL_FILE_TAG, model_file)
    metrics = tmp_path / "metrics.json"
    io.write_json(metrics, {"f1": 0.9})
    with tracking.stage_run("crf", "evaluate", {}, "h", crf.DESCRIPTION) as evaluate_run:
        tracking.log_inputs(stages.data_inputs(data, vocab, training=False))
        tracking.tag_output(tracking.METRICS_FILE_TAG, metrics)
    export_run, version, _ = export_crf(trained_crf, tmp_path / "pyfunc", 0.9, metrics_file=metrics)

    found = lineage.walk("kexue-crf")
    assert found.version == version
    assert found.tags["git.commit"] == git_head
    assert found.tags[tracking.PARAMS_TAG] == sha256(tmp_path / "params.yaml")
    ids = {run.stage: run.run_id for run in found.runs}
    assert ids == {
        "export": export_run.info.run_id,
        "evaluate": evaluate_run.info.run_id,
        "train": train_run.info.run_id,
    }
    train = found.run("train")
    assert train.found and train.tags["git.commit"] == git_head
    assert [(d.context, d.source) for d in train.datasets] == [
        ("train", str(data / "train.txt")),
        ("validation", str(data / "validation.txt")),
        ("vocabulary", str(vocab)),
    ]
    for dataset in train.datasets:  # sources outside the working folder are absolute
        digest = sha256(Path(dataset.source))
        assert dataset.sha256 == digest and dataset.digest == digest[:36]
    train_rows = {d.context: d.rows for d in train.datasets}
    assert train_rows["train"] == len((data / "train.txt").read_text().splitlines())
    assert train_rows["validation"] == len((data / "validation.txt").read_text().splitlines())
    assert train_rows["vocabulary"] is None  # a JSON document has no rows
    assert {d.context for d in found.run("evaluate").datasets} == {
        "train",
        "validation",
        "test",
        "vocabulary",
    }

    assert lineage.main(["crf"]) == 0
    printed = capsys.readouterr().out
    assert f"kexue-crf version {version} (@champion)" in printed
    assert f"train run {train_run.info.run_id} (train_crf, FINISHED" in printed
    assert f"git.commit: {git_head}" in printed
    train_file = data / "train.txt"
    assert f"{train_rows['train']:,} rows  {train_file}  sha256 {sha256(train_file)}" in printed


def test_a_version_whose_runs_left_the_store_says_unknown(trained_crf, mlflow_store, tmp_path):
    metrics = tmp_path / "metrics.json"
    io.write_json(metrics, {"f1": 0.9})
    export_run, _, _ = export_crf(trained_crf, tmp_path / "pyfunc", 0.9, metrics_file=metrics)
    found = lineage.walk("kexue-crf")
    assert found.run("export").run_id == export_run.info.run_id
    assert found.run("train").run_id == found.run("evaluate").run_id == tracking.UNKNOWN
    assert "train run unknown: no run in the store wrote" in lineage.describe(found)


def test_a_model_without_champion_is_one_line(mlflow_store, capsys):
    assert lineage.main(["crf"]) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own logs
    assert last_line.startswith("error: models:/kexue-crf@champion: no such version in the")


def test_stages_log_the_splits_they_read_under_their_names(stages, tmp_path):
    data = tmp_path / "prepared"
    data.mkdir()
    for name in ("train", "validation", "validation_pairs", "test", "pairs"):
        np.savez(data / f"{name}.npz", y=np.zeros(2))
    (data / ".hidden").write_text("not data")
    vocab = tmp_path / "vocab.json"
    assert stages.data_inputs(data, None, training=True) == [
        ("train", data / "train.npz"),
        ("validation", data / "validation.npz"),
        ("validation", data / "validation_pairs.npz"),
    ]
    assert stages.data_inputs(data, vocab, training=False) == [
        ("pairs", data / "pairs.npz"),
        ("test", data / "test.npz"),
        ("train", data / "train.npz"),
        ("validation", data / "validation.npz"),
        ("validation", data / "validation_pairs.npz"),
        ("vocabulary", vocab),
    ]


def test_a_prepared_folder_names_its_inputs_and_their_sha256(tmp_path):
    corpus, folder = tmp_path / "corpus.txt", tmp_path / "images"
    corpus.write_text("我们 喜欢\n")
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"png")
    io.write_sources(tmp_path / "prepared", io.digests([corpus, folder]))
    tags = tracking.source_tags(tmp_path / "prepared")
    assert json.loads(tags[tracking.SOURCES_TAG]) == {
        str(corpus): sha256(corpus),
        str(folder): io.hash_paths([folder]),
    }
    assert tracking.source_tags(tmp_path / "made-before-sources") == {}
