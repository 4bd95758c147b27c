"""The MLflow UI a user opens: a real `mlflow server` over a store the test built, rendered
by headless Chromium. Set KEXUE_UI_SCREENSHOT=docs/mlflow-ui.png to keep the screenshot."""

import os
import shutil

import pytest
from browser import WINDOW, page_text, screenshot
from conftest import REPO, export_crf
from PIL import Image

from kexue import tracking
from kexue.servers import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture
def ui(trained_crf, mlflow_store, tmp_path):
    """A store with a train run (per-epoch loss) and a registered champion, served on loopback."""
    with tracking.stage_run("crf", "train", {"crf.train.epochs": 2}, data_hash="abc"):
        for epoch, loss in enumerate([3.0, 2.0], start=1):
            tracking.log_metrics({"loss": loss}, step=epoch)
    export_crf(trained_crf, tmp_path / "pyfunc", score=0.9)
    experiment_id = tracking.connect().get_experiment_by_name("kexue-crf").experiment_id
    with mlflow_server(mlflow_store, tmp_path / "server.log") as url:
        yield url, experiment_id


def test_ui_shows_the_experiment_runs_and_registered_champion(ui, tmp_path):
    url, experiment_id = ui
    runs_page = f"{url}/#/experiments/{experiment_id}/runs"
    runs = page_text(runs_page, tmp_path / "profile")
    assert "kexue-crf" in runs and "train_crf" in runs and "export_crf" in runs

    model = page_text(f"{url}/#/models/kexue-crf", tmp_path / "profile")
    assert "Version 1" in model and "champion" in model
    assert "CNN + CRF Chinese word segmenter" in model  # the registered description

    shot = screenshot(runs_page, tmp_path / "runs.png", tmp_path / "profile")
    with Image.open(shot) as image:
        assert image.size == WINDOW
        # A rendered page, not a blank one: many distinct colours (text, icons, table).
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50
    if target := os.environ.get("KEXUE_UI_SCREENSHOT"):
        shutil.copy(shot, REPO / target)  # relative to the repo: the test runs elsewhere
