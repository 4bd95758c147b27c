"""README's results table is what `python -m kexue.report` writes from the metrics files."""

import subprocess
import sys

import pytest
from conftest import REPO

from kexue import io, report


def test_readme_table_is_the_generated_one():
    result = subprocess.run(
        [sys.executable, "-m", "kexue.report", "--check", "--root", str(REPO)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("low", "high", "seeds", "said"),
    [
        (0.01, 0.03, [0.02, 0.01, 0.03], "**better** (interval and 3 seeds agree)"),
        (-0.03, -0.01, [-0.02, -0.01], "**worse** (interval and 2 seeds agree)"),
        (0.01, 0.03, [0.02, -0.01, 0.03], "no difference measured (the seeds disagree)"),
        (-0.01, 0.03, [0.02, 0.01, 0.03], "no difference measured"),
        (0.01, 0.03, [], "better on this test set (interval); seeds not run"),
    ],
)
def test_a_claim_needs_the_interval_and_every_seed(low, high, seeds, said):
    assert report.verdict(low, high, seeds) == said


def test_a_lower_error_than_the_baseline_is_better():
    assert report.verdict(-0.03, -0.01, [-0.02, -0.01], lower_is_better=True) == (
        "**better** (interval and 2 seeds agree)"
    )
    assert report.verdict(0.01, 0.03, [], lower_is_better=True).startswith("worse")


def test_table_rows_come_from_the_metrics_files(tmp_path):
    metrics = {"f1": 0.9, "f1_items": 50, "f1_jieba": 0.8, "f1_vs_jieba": 0.1}
    metrics.update(f1_vs_jieba_low=0.05, f1_vs_jieba_high=0.15, test_overlap=0)
    io.write_json(tmp_path / "metrics" / "crf.json", metrics)
    io.write_json(
        tmp_path / "metrics" / "validation" / "crf.json", {"best_epoch": 3, "best_val_loss": 0.25}
    )
    io.write_json(
        tmp_path / "metrics" / "seeds_runs.json",
        {"runs": {"crf": {"1": {"f1_vs_jieba": 0.1}, "2": {"f1_vs_jieba": 0.12}}}},
    )
    (tmp_path / "README.md").write_text(f"# x\n{report.BEGIN}\nold\n{report.END}\nafter\n")
    rows = report.model_rows(tmp_path, "crf")
    assert rows == [
        "| crf | f1 (50 items, 0 seen in training) | 0.9 (-) | jieba: 0.8 "
        "| +0.1000 [+0.0500, +0.1500] (-) | **better** (interval and 2 seeds agree) "
        "| epoch 3 (val loss 0.25) |"
    ]
    assert report.model_rows(tmp_path, "ode") == ["| ode | not evaluated yet | | | | | |"]
    updated = report.rewrite((tmp_path / "README.md").read_text(), "TABLE")
    assert updated == f"# x\n{report.BEGIN}\nTABLE\n{report.END}\nafter\n"
