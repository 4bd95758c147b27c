"""What `dvc plots show` and `dvc metrics show` give a user: for every model, its training
curves and an evaluation picture, each with a title and axes, and its headline metrics.

Runs DVC on the repository itself: its plot and metric files are committed (`cache: false`),
so a fresh clone renders them before anything is rebuilt."""

import json
import subprocess

import pytest
import yaml
from conftest import REPO

from kexue.models import MODELS
from kexue.servers import tool_env

pytestmark = pytest.mark.slow

EVALUATION_TEMPLATES = {"confusion", "bar_horizontal", "scatter", "linear"}


def declared_plots() -> dict[str, dict]:
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    named = [entry for entry in plots if isinstance(entry, dict)]  # not a bare image path
    return {name: spec for entry in named for name, spec in entry.items()}


def dvc_json(*command: str) -> dict:
    result = subprocess.run(
        ["dvc", *command, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=tool_env({"DVC_NO_ANALYTICS": "1"}),
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_declares_a_training_curve_and_an_evaluation_picture(model):
    plots = declared_plots()
    training = plots[f"{model}_training"]
    assert training["template"] == "linear" and training["x"] == "epoch"
    assert {"title", "x_label", "y_label"} <= set(training)
    pictures = [
        spec
        for name, spec in plots.items()
        if name.startswith(f"{model}_") and name != f"{model}_training"
    ]
    assert pictures, f"{model}: no evaluation plot in dvc.yaml"
    for spec in pictures:
        assert spec["template"] in EVALUATION_TEMPLATES and spec["title"]


def test_plots_show_renders_every_declared_plot_without_errors():
    shown = dvc_json("plots", "show")
    assert not shown.get("errors"), shown.get("errors")
    for name in declared_plots():
        assert shown["data"][name], f"{name}: no data rendered"


def test_metrics_show_lists_every_models_headline_figures():
    (workspace,) = dvc_json("metrics", "show").values()  # the one revision: the workspace
    files = workspace["data"]
    for model in MODELS:
        assert files[f"metrics/{model}.json"]["data"], model
