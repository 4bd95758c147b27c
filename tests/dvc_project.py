"""A tiny copy of the project in a temp git repo, for tests that run real DVC on it."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import yaml
from conftest import REPO, tiny_corpus_lines

from kexue.servers import tool_env

CRF_BRANCH = ["prepare_crf", "vocab_crf", "train_crf", "evaluate_crf", "export_crf"]

ENV = tool_env(
    {
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "MLFLOW_TRACKING_URI": "",
        "DVC_NO_ANALYTICS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
)

# The crf branch on a tiny `dvc add`-ed corpus and a tiny model: seconds per stage.
TINY_CRF = {
    "crf.corpus": "data/user/corpus.txt",
    "crf.model.embedding_dim": 16,
    "crf.model.conv_filters": 16,
    "crf.model.conv_layers": 1,
    "crf.train.epochs": 3,
    "crf.train.batch_size": 16,
}


def run(
    cwd: Path, *command: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env={**ENV, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def set_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))


def mlflow_runs(repo: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(repo / "mlruns.db") as db:
        return db.execute("select name, status from runs order by start_time").fetchall()


def make_project(repo: Path, params: dict, corpus_lines: int = 200) -> Path:
    """Copy the pipeline and package into `repo`, commit it with a tiny `dvc add`-ed crf
    corpus, data/user/corpus.txt (none for `corpus_lines=0`)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"]:
        shutil.copy(REPO / name, repo / name)
    for folder in ["stages", "src"]:
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data").mkdir()
    shutil.copy(REPO / "data" / "jieba_userdict.txt", repo / "data")
    # The committed example files: the stages that can read them always depend on them.
    shutil.copytree(REPO / "data" / "examples", repo / "data" / "examples")
    if corpus_lines:
        (repo / "data" / "user").mkdir()
        (repo / "data" / "user" / "corpus.txt").write_text(
            "\n".join(tiny_corpus_lines(corpus_lines, seed=3)) + "\n"
        )
    set_params(repo, params)
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    if corpus_lines:
        run(repo, "dvc", "add", "-q", "data/user/corpus.txt")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "tiny project")
    return repo


def stale(repo: Path) -> set[str]:
    """What `dvc status` reports as changed, the whole project's stages and .dvc files."""
    return set(json.loads(run(repo, "dvc", "status", "--json").stdout))


def downstream(repo: Path, target: str, changed: set[str]) -> set[str]:
    """`changed` and every stage after it on the way to `target` (`dvc dag`)."""
    dot = run(repo, "dvc", "dag", "--dot", target).stdout
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dot)
    found, frontier = set(changed), set(changed)
    while frontier:
        frontier = {after for before, after in edges if before in frontier} - found
        found |= frontier
    return found
