"""Every stage lists the project code it runs, so `dvc status` says when a result is stale;
and the data files its params name, so your own file is a params change, not a dvc.yaml edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from dvc_project import run, set_params

from kexue.code_closure import closure, module_bundle, stage_closure
from kexue.models import MODELS

# Modules a stage imports that cannot change its outputs, so dvc.yaml leaves them out:
EXEMPT = {
    "src/kexue/__init__.py": "the version string and TensorFlow's C++ log level",
    "src/kexue/errors.py": "exception types: they change what an error says, not a result",
    "src/kexue/tracking.py": "MLflow runs: logs params, metrics and artifacts, writes no output",
}


def resolved_stages(root: Path) -> list[tuple[str, str, set[str]]]:
    """(name, command, declared deps) of every stage, foreach templates expanded by DVC."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [
            (stage.name, stage.cmd, {dep.def_path for dep in stage.deps})
            for stage in repo.index.stages
        ]


def required_code(root: Path, cmd: str) -> set[str]:
    return {str(path) for path in stage_closure(root, cmd, MODELS)} - set(EXEMPT)


def test_every_stage_lists_the_code_it_imports():
    missing = [
        f"{name}: {module}"
        for name, cmd, deps in resolved_stages(REPO)
        for module in sorted(required_code(REPO, cmd) - deps)
    ]
    assert not missing, "dvc.yaml deps miss modules the stage imports:\n" + "\n".join(missing)


def test_own_data_files_are_params_the_stages_read_and_depend_on(tmp_path):
    for name in ["dvc.yaml", "params.yaml"]:
        shutil.copy(REPO / name, tmp_path / name)
    run(tmp_path, "dvc", "init", "-q", "--no-scm")
    defaults = {name: (cmd, deps) for name, cmd, deps in resolved_stages(tmp_path)}
    for stage, path in [
        ("prepare_attention", "data/examples/labelled_news.tsv"),
        ("prepare_ode", "data/examples/ode_post_table.csv"),
    ]:
        cmd, deps = defaults[stage]
        assert path in deps and cmd.endswith(path) and (REPO / path).is_file()
    set_params(
        tmp_path,
        {
            "attention.data.source": "labelled",
            "attention.data.labelled": "data/mine.csv",
            "ode.data.source": "file",
            "ode.data.observations": "data/mine_ode.csv",
            "similarity.data.format": "groups",
            "similarity.corpus": "data/mine_groups.tsv",
        },
    )
    changed = {name: (cmd, deps) for name, cmd, deps in resolved_stages(tmp_path)}
    for stage, path in [
        ("prepare_attention", "data/mine.csv"),
        ("prepare_ode", "data/mine_ode.csv"),
        ("prepare_similarity", "data/mine_groups.tsv"),
    ]:
        cmd, deps = changed[stage]
        assert path in deps and path in cmd.split()


def test_each_exemption_is_a_module_some_stage_imports():
    imported = set().union(
        *(
            {str(path) for path in stage_closure(REPO, cmd, MODELS)}
            for _, cmd, _ in resolved_stages(REPO)
        )
    )
    assert set(EXEMPT) <= imported


def test_closure_follows_imports_inside_functions_and_package_inits(tmp_path):
    package = tmp_path / "src" / "kexue"
    (package / "text").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    (package / "__init__.py").write_text("VERSION = 1\n")
    (package / "text" / "__init__.py").write_text("")
    (package / "text" / "vocab.py").write_text("from kexue import io\n")
    (package / "io.py").write_text("import json\n")
    (package / "unused.py").write_text("")
    (package / "late.py").write_text("def f():\n    from kexue.text.vocab import Vocab\n")
    (tmp_path / "stages" / "_common.py").write_text("import kexue.late\n")
    (tmp_path / "stages" / "go.py").write_text("from _common import x\n")

    assert {str(p) for p in closure(tmp_path, [Path("stages/go.py")])} == {
        "stages/go.py",
        "stages/_common.py",
        "src/kexue/__init__.py",
        "src/kexue/late.py",
        "src/kexue/text/vocab.py",
        "src/kexue/io.py",
    }


def test_a_stage_that_loads_its_model_depends_on_the_models_module():
    train = required_code(REPO, "python stages/train.py crf --data d")
    fetch_images = required_code(REPO, "python stages/fetch_images.py dogs data/images/dogs")
    assert {"src/kexue/models/crf.py", "src/kexue/layers/crf.py"} <= train
    assert "src/kexue/models/dogs.py" not in fetch_images


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory) -> Path:
    """The project's pipeline files and code in a fresh git + DVC repo, without data."""
    repo = tmp_path_factory.mktemp("pipeline")
    for name in ["dvc.yaml", "dvc.lock", "params.yaml"]:
        shutil.copy(REPO / name, repo / name)
    for folder in ["stages", "src"]:
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    return repo


def stages_with_modified(repo: Path, module: str) -> set[str]:
    """The stages `dvc status` reports because `module` changed."""
    status = json.loads(run(repo, "dvc", "status", "--json").stdout or "{}")
    return {
        stage
        for stage, changes in status.items()
        for change in changes
        if isinstance(change, dict) and change.get("changed deps", {}).get(module) == "modified"
    }


@pytest.mark.slow
@pytest.mark.parametrize("module", ["src/kexue/layers/crf.py", "src/kexue/text/vocab.py"])
def test_touching_a_module_makes_exactly_its_stages_stale(pipeline_copy, module):
    holders = {
        name
        for name, cmd, _ in resolved_stages(pipeline_copy)
        if module in required_code(REPO, cmd)
    }
    assert holders and not stages_with_modified(pipeline_copy, module)
    path = pipeline_copy / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# touched\n")
        assert stages_with_modified(pipeline_copy, module) == holders
    finally:
        path.write_text(original)


def test_an_exported_model_carries_only_the_code_its_module_imports(
    trained_crf, mlflow_store, tmp_path
):
    from conftest import export_crf

    export_crf(trained_crf, tmp_path / "pyfunc", score=0.5)
    bundled = {
        str(path.relative_to(tmp_path / "pyfunc" / "code"))
        for path in (tmp_path / "pyfunc" / "code").rglob("*.py")
    }
    src = REPO / "src"
    assert bundled == {str(path) for path in module_bundle(src, "kexue.models.crf")}
    assert {"kexue/models/crf.py", "kexue/layers/crf.py"} <= bundled
    assert not {"kexue/models/title.py", "kexue/cli.py", "kexue/registry.py"} & bundled
