"""Kill a training stage half-way, rerun `dvc repro`: it resumes from the last finished epoch
and ends close to an uninterrupted run; two uninterrupted runs with one seed are identical.

Why close and not identical: Keras' backup holds the weights, the optimizer and the epoch,
but not tf.data's reshuffling state, so the epochs after a resume see other batch orders.
"""

import csv
import json
import os
import signal
import subprocess
import time

import pytest
from dvc_project import ENV, TINY_CRF, make_project, run, stages_run

pytestmark = pytest.mark.slow

EPOCHS = 6
KILL_AFTER_EPOCHS = 2
POLL_SECONDS = 0.02
F1_TOLERANCE = 0.03  # tiny model, tiny data: one run's F1 moves this much with batch order


def curve(repo) -> list[dict]:
    with (repo / "plots" / "crf" / "train.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def metrics(repo) -> dict:
    return json.loads((repo / "metrics" / "crf.json").read_text())


def backed_up_curve(repo) -> list[str]:
    """Rows of the curve kept in the training's backup folder (none before epoch 1 ends)."""
    for path in (repo / ".kexue" / "backup").glob("crf-*/curves.csv"):
        return path.read_text().splitlines()[1:]
    return []


def kill_after_epochs(repo, epochs: int) -> None:
    """Start `dvc repro` and SIGKILL its process group once `epochs` epochs are backed up."""
    process = subprocess.Popen(
        ["dvc", "repro", "evaluate_crf"],
        cwd=repo,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while len(backed_up_curve(repo)) < epochs:
            assert process.poll() is None, "training ended before it could be interrupted"
            time.sleep(POLL_SECONDS)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def retrain(repo) -> None:
    result = run(repo, "dvc", "repro", "--force", "--single-item", "train_crf")
    assert stages_run(result.stdout) == ["train_crf"]
    run(repo, "dvc", "repro", "evaluate_crf")


@pytest.fixture
def repo(tmp_path):
    # No early stop: every epoch runs, so the resumed and uninterrupted curves line up.
    params = {
        **TINY_CRF,
        "crf.train.epochs": EPOCHS,
        "crf.train.patience": EPOCHS,
        "runtime.deterministic": True,
    }
    repo = make_project(tmp_path, params, corpus_lines=400)
    run(repo, "dvc", "repro", "vocab_crf")
    return repo


def test_killed_training_resumes_from_its_last_epoch(repo):
    kill_after_epochs(repo, KILL_AFTER_EPOCHS)
    assert not (repo / "models" / "crf" / "model.keras").exists()  # nothing half-written
    before_kill = backed_up_curve(repo)

    resumed = run(repo, "dvc", "repro", "evaluate_crf")
    assert stages_run(resumed.stdout) == ["train_crf", "evaluate_crf"]
    assert not list((repo / ".kexue" / "backup").glob("crf-*"))  # dropped once finished
    resumed_curve, resumed_metrics = curve(repo), metrics(repo)
    assert [int(row["epoch"]) for row in resumed_curve] == list(range(1, EPOCHS + 1))

    retrain(repo)  # uninterrupted, same seed
    uninterrupted_curve, uninterrupted_metrics = curve(repo), metrics(repo)
    # The epochs before the kill are the uninterrupted run's, exactly: they were restored.
    rows = [",".join(row.values()) for row in uninterrupted_curve[:KILL_AFTER_EPOCHS]]
    assert rows == before_kill[:KILL_AFTER_EPOCHS]
    assert resumed_metrics["f1"] == pytest.approx(uninterrupted_metrics["f1"], abs=F1_TOLERANCE)

    retrain(repo)  # deterministic: the same seed and data give the very same run
    assert curve(repo) == uninterrupted_curve
    assert metrics(repo) == uninterrupted_metrics
