"""The self-attention sentiment classifier end to end on tiny review files: dedup before the
split, no held-out review seen in training, training with early stopping, both baselines in
their own stage, evaluation item by item, the pyfunc on raw text, the CLI."""

import dataclasses

import mlflow
import pandas as pd
import pytest
from conftest import REPO, assert_exported_with_example, tiny_runtime, train_tiny

from kexue import cli, params, registry, stats, tracking
from kexue.errors import DataError
from kexue.models import attention
from kexue.text.segmentation import JiebaSettings

# Segmented as the `segment` stage writes them: words separated by spaces.
POSITIVE = ["质量 很 好", "非常 满意", "很 好 推荐", "满意 推荐", "好 好", "非常 好 推荐"]
NEGATIVE = ["质量 很 差", "非常 失望", "很 差 退货", "失望 退货", "差 差", "非常 差 退货"]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(**data) -> attention.Config:
    config = params.parse(
        attention.Config, params.block(params.load(REPO / "params.yaml"), "attention"), "attention"
    )
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, validation_fraction=0.25, test_fraction=0.25, **data),
        vocab=dataclasses.replace(config.vocab, min_count=1),
        model=dataclasses.replace(config.model, embedding_dim=8, heads=2, size_per_head=4),
        train=dataclasses.replace(
            config.train, epochs=30, patience=30, batch_size=4, learning_rate=0.05
        ),
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    corpora = [write(root / "pos.txt", POSITIVE * 4), write(root / "neg.txt", NEGATIVE * 4)]
    trained = train_tiny(attention, tiny_config(), corpora, root)
    trained["baselines"] = root / "baselines"
    # Baselines need only exist here: a shorter budget keeps the test quick.
    short = dataclasses.replace(
        trained["config"], train=dataclasses.replace(trained["config"].train, epochs=5)
    )
    trained["baseline_summary"] = attention.train_baselines(
        short,
        tiny_runtime(root),
        trained["data"],
        trained["vocab"],
        trained["baselines"],
        root / "baseline_curves",
    )
    return trained


def test_prepare_deduplicates_before_the_split(tmp_path):
    # Same text cut differently is one review; one review under both labels is dropped.
    pos = write(tmp_path / "pos.txt", ["很 好", "很好", "", "好 啊", "一般"])
    neg = write(tmp_path / "neg.txt", ["很 差", "一般", "很差", "太 差"])
    counts = attention.prepare(tiny_config(), [pos, neg], tmp_path / "out")
    assert counts == {
        "lines": 9, "empty": 1, "duplicates": 2, "conflicting": 1,
        "train": 2, "validation": 1, "test": 1,
        "validation_overlap_dropped": 0, "test_overlap_dropped": 0,
    }  # fmt: skip
    sides = {
        side: {"".join(r.words) for r in attention.read_reviews(tmp_path / "out" / f"{side}.tsv")}
        for side in ("train", "validation", "test")
    }
    assert sorted(set.union(*sides.values())) == sorted(["很好", "好啊", "很差", "太差"])


def test_no_held_out_review_is_seen_in_training_whatever_jieba_cut(tiny):
    # The tiny corpus repeats each review 4 times: one review, one side.
    sides = {
        side: [
            attention.review_key(r) for r in attention.read_reviews(tiny["data"] / f"{side}.tsv")
        ]
        for side in ("train", "validation", "test")
    }
    assert all(len(keys) == len(set(keys)) for keys in sides.values())
    assert not set(sides["test"]) & (set(sides["train"]) | set(sides["validation"]))
    assert not set(sides["validation"]) & set(sides["train"])
    assert {side: len(keys) for side, keys in sides.items()} == {
        "train": 6, "validation": 3, "test": 3
    }  # fmt: skip


def test_a_bad_line_names_file_and_line(tmp_path):
    bad = write(tmp_path / "train.tsv", ["1\t很 好", "positive\t好"])
    with pytest.raises(DataError, match=r"train.tsv:2: expected 0\|1<TAB>words"):
        attention.read_reviews(bad)


def test_training_learns_the_tiny_reviews(tiny):
    classifier = attention.Classifier.load(
        tiny["model_dir"] / attention.MODEL_FILE, tiny["vocab"], max_words=100, batch_size=4
    )
    positive, negative = classifier.positive([["很", "好"], ["很", "差"]])
    assert positive > 0.8 and negative < 0.2
    assert tiny["counts"]["duplicates"] == 36
    assert tiny["summary"]["train_reviews"] == 6 and tiny["summary"]["validation_reviews"] == 3
    assert 1 <= tiny["summary"]["best_epoch"] <= 30 and "best_val_loss" in tiny["summary"]


def test_baselines_train_like_the_model_in_their_own_folder(tiny):
    summary = tiny["baseline_summary"]
    for kind in ("no_position", "bag_of_embeddings"):
        assert (tiny["baselines"] / f"{kind}.keras").is_file()
        assert (tiny["root"] / "baseline_curves" / f"{kind}.csv").is_file()
        assert {f"{kind}_best_epoch", f"{kind}_best_val_loss"} <= set(summary)


def test_evaluate_scores_each_review_for_the_model_and_both_baselines(tiny, tmp_path):
    metrics, scores = attention.evaluate(
        tiny["config"],
        tiny["data"],
        tiny["vocab"],
        tiny["model_dir"],
        tmp_path / "plots",
        tiny["baselines"],
    )
    assert metrics["test_overlap"] == 0 and metrics["test_reviews"] == 3
    [acc] = scores
    assert acc.metric == attention.SCORE and set(acc.baselines) == {"no_pos", "bow"}
    assert all(len(v) == 3 for v in (acc.model, *acc.baselines.values()))
    assert stats.figure(acc.model) == 1.0
    confusion = (tmp_path / "plots" / "confusion.json").read_text()
    assert '"actual"' in confusion and '"predicted"' in confusion


@pytest.fixture
def pyfunc_dir(tiny, tmp_path, mlflow_store):
    jieba = JiebaSettings(hmm=True, user_dict=str(REPO / "data" / "jieba_userdict.txt"), corpora={})
    out = tmp_path / "pyfunc"
    with tracking.stage_run("attention", "export", {}, data_hash="h"):
        registry.export_pyfunc(
            out, attention.pyfunc(tiny["config"], tiny["vocab"], tiny["model_dir"], jieba)
        )
    return out


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(pyfunc_dir):
    assert_exported_with_example(pyfunc_dir)


def test_pyfunc_answers_raw_text_of_any_length_and_refuses_non_strings(pyfunc_dir):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    texts = ["质量很好，推荐", "质量很差，退货", "", "很好" * 500]
    positive = model.predict(pd.DataFrame({"text": texts}))["positive"].tolist()
    assert positive[0] > 0.5 > positive[1]
    assert all(0.0 <= p <= 1.0 for p in positive)  # "" and a long text get answers too
    with pytest.raises(mlflow.exceptions.MlflowException, match="column text"):
        model.predict(pd.DataFrame({"text": [3]}))


def test_cli_prints_probability_and_label(pyfunc_dir, capsys):
    assert cli.main(["sentiment", "--model", str(pyfunc_dir), "质量很好，推荐", "很差"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [label for _, label in lines] == ["positive", "negative"]
    assert float(lines[0][0]) > 0.5
