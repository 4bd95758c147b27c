"""bench/seeds.py on the tiny project: the committed seed's metrics and another seed's fresh
clone (sharing the DVC cache) give the spread of every figure and difference."""

import json
import sys

import pytest
from conftest import REPO
from dvc_project import TINY_CRF, make_project, run, stages_run

pytestmark = pytest.mark.slow


def test_seeds_trains_again_with_another_seed_and_writes_the_spread(tmp_path):
    repo = make_project(tmp_path / "project", {**TINY_CRF, "runtime.seed": 5})
    run(repo, "dvc", "repro", "evaluate_crf")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "evaluated")
    seeds = ["--models", "crf", "--seeds", "5", "6"]
    command = [sys.executable, str(REPO / "bench" / "seeds.py"), *seeds]
    result = run(repo, *command)
    runs = json.loads((repo / "metrics" / "seeds_runs.json").read_text())["runs"]
    assert sorted(runs["crf"]) == ["5", "6"]
    first = json.loads((repo / "metrics" / "crf.json").read_text())
    assert runs["crf"]["5"]["f1"] == first["f1"]
    spread = json.loads((repo / "metrics" / "seeds.json").read_text())["crf"]
    for key in ("f1", "f1_jieba", "f1_vs_jieba"):
        values = [runs["crf"][s][key] for s in ("5", "6")]
        assert spread[key]["min"] == min(values) and spread[key]["max"] == max(values)
    assert "f1_vs_jieba_low" not in spread  # an interval's ends are not seed figures
    assert "crf over seeds [5, 6]" in result.stdout
    # The workspace itself was not retrained: its own seed's metrics were reused.
    assert stages_run(run(repo, "dvc", "repro", "evaluate_crf").stdout) == []
    # A second call with the same code reuses seed 6's run instead of training again.
    again = run(repo, *command)
    assert "seed 6:" not in again.stdout and "crf over seeds [5, 6]" in again.stdout
