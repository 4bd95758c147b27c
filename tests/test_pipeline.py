"""Real DVC in a temp git repo: the crf branch of the pipeline on a tiny `dvc add`-ed corpus.

Checks that `dvc repro` builds, does nothing when nothing changed, reruns exactly the stages
a change touches, and that `dvc exp run --temp` logs into the project's own MLflow store.
"""

import sqlite3

import pytest
import yaml
from dvc_project import (
    CRF_BRANCH,
    TINY_CRF,
    downstream,
    make_project,
    mlflow_runs,
    run,
    set_params,
    stages_run,
    stale,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("pipeline"), TINY_CRF)


def test_repro_builds_the_crf_branch_and_registers_a_champion(repo):
    result = run(repo, "dvc", "repro", "export_crf")
    assert stages_run(result.stdout) == CRF_BRANCH
    metrics = yaml.safe_load((repo / "metrics" / "crf.json").read_text())
    assert {"precision", "recall", "f1", "f1_jieba", "f1_vs_jieba_low", "test_overlap"} <= set(
        metrics
    )
    assert (repo / "models" / "crf" / "pyfunc" / "MLmodel").is_file()
    assert [name for name, _ in mlflow_runs(repo)] == ["train_crf", "evaluate_crf", "export_crf"]
    with sqlite3.connect(repo / "mlruns.db") as db:
        assert db.execute("select alias from registered_model_aliases").fetchall() == [
            ("champion",)
        ]
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "built")


def test_second_repro_does_nothing(repo):
    result = run(repo, "dvc", "repro", "export_crf")
    assert stages_run(result.stdout) == []
    assert len(mlflow_runs(repo)) == 3


def test_training_param_reruns_only_train_evaluate_export(repo):
    set_params(repo, {"crf.train.epochs": 2})
    result = run(repo, "dvc", "repro", "export_crf")
    assert stages_run(result.stdout) == ["train_crf", "evaluate_crf", "export_crf"]
    # The new version was compared with version 1, scored on the new test split.
    with sqlite3.connect(repo / "mlruns.db") as db:
        tags = dict(db.execute("select key, value from model_version_tags where version = 2"))
    assert tags["champion.version"] == "1" and float(tags["champion.score"]) >= 0


def test_exp_run_in_a_temp_workspace_logs_to_the_project_store(repo):
    before = len(mlflow_runs(repo))
    run(repo, "dvc", "exp", "run", "--temp", "-S", "crf.train.epochs=1", "export_crf")
    runs = mlflow_runs(repo)
    assert [name for name, _ in runs[before:]] == ["train_crf", "evaluate_crf", "export_crf"]
    assert all(status == "FINISHED" for _, status in runs)
    assert not list((repo / ".dvc" / "tmp").rglob("mlruns.db"))


def test_exp_run_with_numbers_in_dvcs_own_formats(repo):
    # DVC writes 1e-5 as `1e-05` and .5 as `0.5`; both must parse as floats, null as None.
    run(
        repo,
        *("dvc", "exp", "run", "--temp", "-S", "crf.train.learning_rate=1e-5"),
        *("-S", "crf.model.dropout=.5", "-S", "crf.train.max_sentences=null", "train_crf"),
    )
    with sqlite3.connect(repo / "mlruns.db") as db:
        logged = dict(
            db.execute(
                "select key, value from params where run_uuid = (select run_uuid from runs "
                "where name = 'train_crf' order by start_time desc limit 1)"
            ).fetchall()
        )
    assert float(logged["crf.train.learning_rate"]) == 1e-5
    assert float(logged["crf.model.dropout"]) == 0.5
    assert logged["crf.train.max_sentences"] == "None"


ATTENTION_BRANCH = [
    "prepare_attention",
    "vocab_attention",
    "train_attention",
    "baseline_attention",
    "evaluate_attention",
    "export_attention",
]
TINY_ATTENTION = {
    "segment.corpora": {
        "reviews_pos": "data/user/reviews_pos.txt",
        "reviews_neg": "data/user/reviews_neg.txt",
    },
    "attention.vocab.min_count": 1,
}
# What reads the segmented reviews without TensorFlow: built here, the rest of the branch is
# found from DVC's graph (the attention recipe in test_recipes.py builds the whole branch).
ATTENTION_DATA = ["prepare_attention", "vocab_attention"]


def segments_then(output: str) -> tuple[set[str], list[str]]:
    """(the segment stages run, in any order: DVC may take either first; the stages after)."""
    ran = stages_run(output)
    first = next((i for i, stage in enumerate(ran) if not stage.startswith("segment@")), len(ran))
    return set(ran[:first]), ran[first:]


def test_jieba_dictionary_or_reviews_make_only_segment_and_attention_stale(repo):
    for name, text in [("reviews_pos", "质量很好，推荐"), ("reviews_neg", "质量很差，退货")]:
        lines = [f"{text}{i}" for i in range(40)]
        (repo / "data" / "user" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        run(repo, "dvc", "add", "-q", f"data/user/{name}.txt")
    set_params(repo, TINY_ATTENTION)
    built = run(repo, "dvc", "repro", "export_crf", "vocab_attention")
    segments = ["segment@reviews_pos", "segment@reviews_neg"]
    assert segments_then(built.stdout) == (set(segments), ATTENTION_DATA)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "attention data")

    # A user word that changes how the reviews are cut: DVC finds the segment stages stale
    # (and the attention stages that read the dictionary themselves), and after them only the
    # attention branch.
    before = stale(repo)
    dictionary = repo / "data" / "jieba_userdict.txt"
    shipped = dictionary.read_bytes()
    dictionary.write_text("质量很好 100000\n", encoding="utf-8")
    newly_stale = stale(repo) - before
    assert set(segments) <= newly_stale <= {*segments, *ATTENTION_BRANCH}
    assert downstream(repo, "export_attention", newly_stale) == {*segments, *ATTENTION_BRANCH}
    assert downstream(repo, "export_crf", newly_stale) == newly_stale  # no crf stage follows
    dictionary.write_bytes(shipped)
    assert stale(repo) == before

    # New negative reviews: their segment stage alone, then the attention branch; rebuilt, the
    # data stages rerun and no crf stage does.
    (repo / "data" / "user" / "reviews_neg.txt").write_text("太差了\n" * 40)
    run(repo, "dvc", "add", "-q", "data/user/reviews_neg.txt")
    newly_stale = stale(repo) - before
    assert newly_stale == {"segment@reviews_neg"}
    assert downstream(repo, "export_attention", newly_stale) == {*newly_stale, *ATTENTION_BRANCH}
    result = run(repo, "dvc", "repro", "export_crf", "vocab_attention")
    assert stages_run(result.stdout) == ["segment@reviews_neg", *ATTENTION_DATA]
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "new reviews")


def test_wrong_param_type_fails_with_one_line_naming_the_key(repo):
    set_params(repo, {"crf.train.epochs": "three"})
    result = run(
        repo,
        "python",
        "stages/train.py",
        "crf",
        "--data",
        "data/prepared/crf",
        "--vocab",
        "data/vocab/crf.json",
        "--model-dir",
        "models/crf",
        "--curves",
        "plots/crf/train.csv",
        "--validation",
        "metrics/validation/crf.json",
        check=False,
    )
    set_params(repo, {"crf.train.epochs": 2})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: crf.train.epochs: expected int, got str 'three'"
    )


def test_missing_corpus_fails_with_one_line_naming_the_file(repo, tmp_path):
    result = run(
        repo,
        "python",
        "stages/prepare.py",
        "crf",
        str(tmp_path / "out"),
        "data/user/missing.txt",
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: data/user/missing.txt: file not found"
    assert not (tmp_path / "out").exists()
