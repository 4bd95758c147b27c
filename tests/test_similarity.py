"""The GRU + AM-Softmax similarity model end to end on a tiny Cilin file: reader, split (no
held-out text in any training group), retrieval metric by hand, training with early
stopping, the softmax baseline in its own stage, evaluation item by item, the pyfunc's two
modes, the CLI."""

import dataclasses
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from conftest import REPO, assert_exported_with_example, tiny_runtime, train_tiny

from kexue import cli, params, registry, stats, tracking
from kexue.data.cilin import SynonymGroup, read_cilin, read_group_lines
from kexue.datasets import similarity as similarity_data
from kexue.errors import DataError
from kexue.models import similarity
from kexue.models.similarity import Gallery, Member
from kexue.servers import served_model

# Groups with no characters in common, so a tiny encoder can tell them apart; a `#` and an
# `@` line that are not groups, and a code used twice as in the real file.
TINY_CILIN = """\
Aa01A01= 甲乙 乙甲 甲甲 乙乙甲
Aa01A02= 丙丁 丁丙 丙丙 丁丁丙 丙丁
Ab01A01= 戊己 己戊 戊戊 己己戊
Ab01A02# 甲丙 戊庚
Ab01A03@ 壬
Ac01A01= 庚辛 辛庚 庚庚 辛辛庚
Ac01A01= 子丑 丑子 子子 丑丑子
Ad01A01= 辰巳 巳辰
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny encoder trained on TINY_CILIN: config, folders, prepare's counts."""
    root = tmp_path_factory.mktemp("similarity")
    corpus = root / "cilin.txt"
    corpus.write_text(TINY_CILIN, encoding="utf-8")
    config = params.parse(
        similarity.Config,
        params.block(params.load(REPO / "params.yaml"), "similarity"),
        "similarity",
    )
    config = dataclasses.replace(
        config,
        # Of the 5 groups of 3+ members, 1 lends a member to validation and 2 to test.
        data=dataclasses.replace(config.data, validation_fraction=0.2, test_fraction=0.4),
        model=similarity.ModelConfig(embedding_dim=16, hidden_dim=16),
        train=similarity_data.TrainConfig(epochs=40, patience=40, batch_size=8, learning_rate=0.02),
        serve=dataclasses.replace(config.serve, batch_size=4),
    )
    trained = train_tiny(similarity, config, corpus, root)
    trained["baselines"] = root / "baselines"
    trained["baseline_summary"] = similarity.train_baselines(
        config, tiny_runtime(root), root / "data", root / "vocab.json", root / "baselines", root
    )
    return trained


# -- data ---------------------------------------------------------------------------------


def test_reader_keeps_only_synonym_groups_and_renames_a_repeated_code(tmp_path):
    path = tmp_path / "cilin.txt"
    path.write_text(TINY_CILIN, encoding="utf-8")
    groups = read_cilin(path)
    assert [g.code for g in groups] == [
        "Aa01A01",
        "Aa01A02",
        "Ab01A01",
        "Ac01A01",
        "Ac01A01.2",
        "Ad01A01",
    ]
    # A word listed twice in one group counts once.
    assert groups[1].members == ("丙丁", "丁丙", "丙丙", "丁丁丙")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("人类 生人 全人类", "expected 'CODE= word word ...'"),
        ("Aa01A02= ", "Aa01A02= has no words"),
        ("Aa01A02 人类 生人", "expected 'CODE= word word ...'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "cilin.txt"
    path.write_text(f"Aa01A01= 人 士\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"cilin\.txt:2: .*{problem}"):
        read_cilin(path)


def read_sides(data_dir) -> dict[str, list[Member]]:
    return {side: similarity.read_members(data_dir / f"{side}.tsv") for side in SIDES}


SIDES = ("train", "validation", "test")


def test_split_holds_out_one_seeded_member_of_some_groups_of_three_or_more(tiny):
    sides = read_sides(tiny["root"] / "data")
    held_out = sides["validation"] + sides["test"]
    assert (len(sides["validation"]), len(sides["test"])) == (1, 2)
    # One member from each of three different groups of 3+; the pair group lends nothing.
    assert len({m.group for m in held_out}) == 3 and "Ad01A01" not in {m.group for m in held_out}
    assert {m.group for m in sides["train"]} == {
        g.code for g in read_cilin(tiny["root"] / "cilin.txt")
    }
    assert tiny["counts"] == {
        "groups": 6,
        "train_members": len(sides["train"]),
        "validation_members": 1,
        "test_members": 2,
        "known_phrases": 22,
        "validation_overlap_dropped": 0,
        "test_overlap_dropped": 0,
    }
    # Fixed: the same seed gives the same split.
    again, _ = similarity_data.split_members(
        read_cilin(tiny["root"] / "cilin.txt"), tiny["config"].data
    )
    assert again == sides


def test_a_held_out_text_is_in_no_training_group():
    # Every group shares members with others; each has one or two texts of its own.
    groups = [
        SynonymGroup(f"g{i}", (f"own{i}", f"shared{i % 3}", f"shared{(i + 1) % 3}", "everywhere"))
        for i in range(12)
    ] + [SynonymGroup("only_shared", ("shared0", "shared1", "everywhere"))]
    data = similarity_data.DataConfig(
        format="cilin",
        max_groups=None,
        min_group_to_hold_out=3,
        validation_fraction=0.3,
        test_fraction=0.5,
        split_seed=0,
    )
    for seed in range(5):
        sides, dropped = similarity_data.split_members(
            groups, dataclasses.replace(data, split_seed=seed)
        )
        training_texts = {m.text for m in sides["train"]}
        held_out = sides["validation"] + sides["test"]
        assert len(held_out) == 10 and dropped == {
            "validation_overlap_dropped": 0,
            "test_overlap_dropped": 0,
        }
        assert all(m.text.startswith("own") for m in held_out)
        assert not {m.text for m in held_out} & training_texts
        assert not {m.text for m in sides["validation"]} & {m.text for m in sides["test"]}
        # Every member is used once; only groups with a text of their own lend one.
        assert sorted(sides["train"] + held_out, key=str) == sorted(
            (Member(g.code, t) for g in groups for t in g.members), key=str
        )


def test_max_groups_takes_a_seeded_subset(tiny):
    groups = read_cilin(tiny["root"] / "cilin.txt")
    subset = dataclasses.replace(tiny["config"].data, max_groups=4, test_fraction=0.3)
    sides, _ = similarity_data.split_members(groups, subset)
    assert len({m.group for m in sides["train"]}) == 4
    assert similarity_data.split_members(groups, subset)[0] == sides


# TINY_CILIN's groups in the post's layout, one text a line, a group's lines apart.
TINY_GROUP_LINES = "".join(
    f"{code}\t{text}\n"
    for code, texts in [
        ("Aa01A01", "甲乙 乙甲 甲甲 乙乙甲"),
        ("Aa01A02", "丙丁 丁丙 丙丙"),
        ("Ab01A01", "戊己 己戊 戊戊 己己戊"),
        ("Aa01A02", "丁丁丙 丙丁"),  # more of Aa01A02; 丙丁 twice counts once
        ("Ac01A01", "庚辛 辛庚 庚庚 辛辛庚"),
        ("Ac01A01.2", "子丑 丑子 子子 丑丑子"),
        ("Ad01A01", "辰巳 巳辰"),
    ]
    for text in texts.split()
)


def test_group_lines_read_as_the_same_groups_as_cilin(tmp_path):
    (tmp_path / "cilin.txt").write_text(TINY_CILIN, encoding="utf-8")
    (tmp_path / "groups.tsv").write_text(TINY_GROUP_LINES, encoding="utf-8")
    assert read_group_lines(tmp_path / "groups.tsv") == read_cilin(tmp_path / "cilin.txt")
    # A text may hold spaces (a question); the id and the text are trimmed.
    (tmp_path / "faq.tsv").write_text(" faq1 \t怎么 退款\nfaq1\t如何退款 \n", encoding="utf-8")
    assert read_group_lines(tmp_path / "faq.tsv") == [
        SynonymGroup("faq1", ("怎么 退款", "如何退款"))
    ]


def test_prepare_from_group_lines_splits_as_from_cilin(tiny, tmp_path):
    corpus = tmp_path / "groups.tsv"
    corpus.write_text(TINY_GROUP_LINES, encoding="utf-8")
    config = dataclasses.replace(
        tiny["config"], data=dataclasses.replace(tiny["config"].data, format="groups")
    )
    counts = similarity_data.prepare(config, [corpus], tmp_path / "data")
    assert counts == tiny["counts"]
    for name in (*(f"{side}.tsv" for side in SIDES), similarity.PHRASES_FILE):
        assert (tmp_path / "data" / name).read_text() == (tiny["root"] / "data" / name).read_text()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("faq2 怎么退款", r"expected group_id<TAB>text \(one tab\), got 0"),
        ("faq2\t怎么\t退款", r"expected group_id<TAB>text \(one tab\), got 2"),
        (" \t怎么退款", "blank group id; expected group_id<TAB>text"),
        ("faq2\t ", "blank text; expected group_id<TAB>text"),
    ],
)
def test_bad_group_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "groups.tsv"
    path.write_text(f"faq1\t如何退款\n{line}\n", encoding="utf-8")
    config = params.parse(
        similarity.Config,
        params.block(params.load(REPO / "params.yaml"), "similarity"),
        "similarity",
    )
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, format="groups"))
    with pytest.raises(DataError, match=rf"groups\.tsv:2: {problem}"):
        similarity_data.prepare(config, [path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_members_file_names_the_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("Aa01A01\t人\nAa01A01 人类\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:2: expected group<TAB>phrase"):
        similarity.read_members(path)


# -- the retrieval metric, by hand --------------------------------------------------------


def test_first_hit_ranks_on_a_hand_built_case():
    # Gallery on the unit circle at 0, 30, 90 and 180 degrees; "b" is in groups g1 and g2.
    angles = np.radians([0, 30, 90, 180])
    gallery_vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    gallery = Gallery.of(
        [Member("g1", "a"), Member("g1", "b"), Member("g2", "b"), Member("g2", "c")]
        + [Member("g3", "d")]
    )
    assert gallery.texts == ["a", "b", "c", "d"]
    queries = [
        Member("g1", "q1"),  # at 10 degrees: a (g1) is nearest -> rank 1
        Member("g2", "q2"),  # at 10 degrees: a (g1), then b (g1, g2) -> rank 2
        Member("g3", "q3"),  # at 60 degrees: b, c, a, then d (g3) -> rank 4
        Member("g3", "a"),  # its own text "a" is skipped: b, c, d -> rank 3
    ]
    query_angles = np.radians([10, 10, 60, 0])
    query_vectors = np.stack([np.cos(query_angles), np.sin(query_angles)], axis=1)
    ranks = similarity.first_hit_ranks(queries, query_vectors, gallery, gallery_vectors, 4)
    assert ranks.tolist() == [1, 2, 4, 3]
    # Not among the 2 nearest -> 0 (a miss at every k up to max_k).
    assert similarity.first_hit_ranks(
        queries, query_vectors, gallery, gallery_vectors, 2, chunk_size=3
    ).tolist() == [1, 2, 0, 0]
    assert [similarity.top_k_accuracy(ranks, k) for k in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]


def test_equal_scores_rank_by_gallery_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])
    assert similarity.top_indices(scores, 4).tolist() == [[1, 3, 0, 2]]
    assert similarity.top_indices(scores, 9).tolist() == [[1, 3, 0, 2, 4]]


# -- training and evaluation --------------------------------------------------------------


def test_tiny_model_retrieves_held_out_members_with_both_heads(tiny, tmp_path):
    root = tiny["root"]
    metrics, scores = similarity.evaluate(
        tiny["config"], root / "data", root / "vocab.json", root / "model", tmp_path,
        tiny["baselines"],
    )  # fmt: skip
    assert metrics["test_overlap"] == 0
    assert (metrics["test_queries"], metrics["groups"]) == (2, 6)
    assert [s.metric for s in scores] == ["top1", "top5", "top10"]
    assert all(set(s.baselines) == {"softmax"} and len(s.model) == 2 for s in scores)
    assert stats.figure(scores[0].model) == 1.0 and similarity.SCORE == "top1"
    curve = json.loads((tmp_path / "topk.json").read_text())
    assert [row["k"] for row in curve] == list(range(1, 11))
    accuracy = [row["am_softmax"] for row in curve]
    assert accuracy == sorted(accuracy)  # a hit at k is a hit at every larger k


def test_softmax_baseline_trains_like_the_model(tiny):
    baseline_curve = (tiny["root"] / "softmax.csv").read_text().splitlines()
    assert baseline_curve[0] == "epoch,accuracy,loss,val_accuracy,val_loss"
    assert (tiny["baselines"] / "softmax.keras").is_file()
    summary = tiny["baseline_summary"]
    assert {"softmax_best_epoch", "softmax_best_val_loss", "softmax_val_top1"} <= set(summary)


def test_training_writes_model_phrases_and_curves(tiny):
    model_dir = tiny["root"] / "model"
    assert (model_dir / similarity.MODEL_FILE).is_file()
    assert (model_dir / similarity.PHRASES_FILE).read_text(encoding="utf-8").split() == list(
        dict.fromkeys(w for g in read_cilin(tiny["root"] / "cilin.txt") for w in g.members)
    )
    curves = (tiny["root"] / "curves.csv").read_text().splitlines()
    assert curves[0] == "epoch,accuracy,loss,val_accuracy,val_loss"
    assert len(curves) == 1 + tiny["config"].train.epochs
    summary = tiny["summary"]
    assert summary["best_accuracy"] > 0.9 and summary["validation_queries"] == 1
    assert {"best_epoch", "best_val_loss", "val_top1", "val_top5", "val_top10"} <= set(summary)


def test_encoder_gives_unit_vectors_and_zero_for_empty_text(tiny):
    root = tiny["root"]
    encoder = similarity.Encoder.load(
        root / "model" / similarity.MODEL_FILE, root / "vocab.json", batch_size=2
    )
    vectors = encoder.vectors(["甲乙", "", "龘龘", "乙乙甲甲乙", "丙"])
    assert vectors.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 2, 3, 4]], axis=1), 1.0, rtol=1e-5)
    assert (vectors[1] == 0).all()
    # Batching and ordering do not change a text's vector.
    np.testing.assert_allclose(encoder.vectors(["丙", "甲乙"]), vectors[[4, 0]], atol=1e-6)


# -- serving ------------------------------------------------------------------------------


@pytest.fixture
def pyfunc_dir(tiny, tmp_path, mlflow_store):
    out = tmp_path / "pyfunc"
    root = tiny["root"]
    with tracking.stage_run("similarity", "export", {}, data_hash="h"):
        registry.export_pyfunc(
            out, similarity.pyfunc(tiny["config"], root / "vocab.json", root / "model")
        )
    return out


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(pyfunc_dir):
    assert_exported_with_example(pyfunc_dir)


def test_pyfunc_text_mode_answers_vectors(pyfunc_dir):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    out = model.predict(pd.DataFrame({"text": ["甲乙", "乙甲", "庚辛"]}))
    assert list(out.columns) == ["vector"]
    vectors = np.array(out["vector"].tolist())
    assert vectors.shape == (3, 16)
    cosines = vectors @ vectors.T
    assert cosines[0, 1] > cosines[0, 2]  # synonyms closer than strangers


def test_pyfunc_query_mode_ranks_candidates_and_known_phrases(pyfunc_dir):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    out = model.predict(
        pd.DataFrame({"query": ["甲乙", "庚辛"], "candidates": [["丙丁", "乙甲", "庚辛"], []]})
    )
    assert out["ranked"][0][0] == "乙甲" and sorted(out["ranked"][0]) == ["丙丁", "乙甲", "庚辛"]
    assert list(out["scores"][0]) == sorted(out["scores"][0], reverse=True)
    assert list(out["ranked"][1]) == []
    known = model.predict(pd.DataFrame({"query": ["甲乙"]}), params={"top_k": 3})
    # The query's own text is left out; its group's phrases come first.
    assert set(known["ranked"][0]) == {"乙甲", "甲甲", "乙乙甲"}


@pytest.mark.parametrize(
    ("frame", "params", "message"),
    [
        (pd.DataFrame({"words": ["甲"]}), None, "expected a column 'text'.*has neither"),
        (pd.DataFrame({"text": ["甲"], "query": ["甲"]}), None, "not both"),
        (pd.DataFrame({"query": ["甲"], "candidates": [None]}), None, "row 0: 'candidates'"),
        (pd.DataFrame({"query": ["甲"]}), {"top_k": 0}, "top_k must be between 1 and 1000"),
        (pd.DataFrame({"text": [3]}), None, "text"),
        (pd.DataFrame({"query": ["甲"], "candidates": ["乙甲"]}), None, "candidates"),
    ],
)
def test_pyfunc_bad_input_is_a_clear_error(pyfunc_dir, frame, params, message):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(frame, params=params)


def test_cli_similar_prints_known_phrases_with_scores(pyfunc_dir, capsys):
    assert cli.main(["similar", "--model", str(pyfunc_dir), "--top", "2", "丙丁"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    phrase, score = lines[0].split("\t")
    assert set(phrase) <= set("丙丁") and -1.0 <= float(score) <= 1.0


@pytest.mark.slow
def test_served_model_answers_both_modes_over_http(pyfunc_dir, tmp_path):
    with served_model(pyfunc_dir, tmp_path / "serve.log") as url:
        texts = {"dataframe_split": {"columns": ["text"], "data": [["甲乙"]]}}
        vectors = requests.post(url, json=texts)
        assert vectors.status_code == 200, vectors.text
        assert len(vectors.json()["predictions"][0]["vector"]) == 16
        ranked = requests.post(
            url,
            json={
                "dataframe_records": [{"query": "甲乙", "candidates": ["庚辛", "乙甲"]}],
                "params": {"top_k": 2},
            },
        )
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()["predictions"][0]["ranked"] == ["乙甲", "庚辛"]
        example = (pyfunc_dir / "serving_input_example.json").read_bytes()
        answer = requests.post(url, data=example, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert sorted(answer.json()["predictions"][0]["ranked"]) == ["开心", "快乐", "难过"]
        missing = requests.post(url, json={"dataframe_split": {"columns": ["x"], "data": [["甲"]]}})
        assert missing.status_code == 400
        assert "expected a column 'text'" in missing.json()["message"]
