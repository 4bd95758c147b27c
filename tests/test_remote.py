"""Data and models shared through a DVC remote (a local folder here; S3, GCS or SSH the same
way): `dvc push` from one clone, `dvc pull` into a fresh one, which then reproduces nothing.

The tiny project builds only the crf branch, so each command names it (`export_crf
--with-deps`: the stage and everything upstream); in a fully built project the plain commands
move every stage's outputs."""

import pytest
from dvc_project import TINY_CRF, make_project, run, stages_run

pytestmark = pytest.mark.slow
BRANCH = ["export_crf", "--with-deps"]


def test_a_fresh_clone_pulls_every_output_and_reproduces_nothing(tmp_path):
    remote = tmp_path / "remote"
    first = make_project(tmp_path / "first", TINY_CRF)
    run(first, "dvc", "remote", "add", "--default", "shared", str(remote))
    run(first, "dvc", "repro", "export_crf")
    run(first, "git", "add", "-A")
    run(first, "git", "commit", "-qm", "crf built; remote configured")
    run(first, "dvc", "push", *BRANCH)

    run(tmp_path, "git", "clone", "-q", str(first), "second")
    second = tmp_path / "second"
    assert not (second / "models" / "crf" / "model.keras").exists()
    run(second, "dvc", "pull", *BRANCH)
    for output in ["data/user/corpus.txt", "models/crf/model.keras", "models/crf/pyfunc/MLmodel"]:
        assert (second / output).read_bytes() == (first / output).read_bytes(), output

    status = run(second, "dvc", "status", *BRANCH)
    assert "Data and pipelines are up to date." in status.stdout
    assert stages_run(run(second, "dvc", "repro", "export_crf").stdout) == []
    assert not (second / "mlruns.db").exists()  # no stage ran, so nothing was logged
