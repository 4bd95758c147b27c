"""The self-attention sentiment classifier end to end on tiny review files: dedup before the
split, no held-out review seen in training, training with early stopping, both baselines in
their own stage, evaluation item by item, the pyfunc on raw text, the CLI; and on a labelled
file of three labels (a softmax), its reader and its one-line errors."""

import dataclasses
import json

import mlflow
import pandas as pd
import pytest
from conftest import REPO, assert_exported_with_example, tiny_runtime, train_tiny

from kexue import cli, params, registry, stats, tracking
from kexue.datasets import attention as attention_data
from kexue.errors import DataError
from kexue.models import attention
from kexue.text.segmentation import JiebaSettings

# The `segment` block of params.yaml, the user dictionary found from any folder.
SEGMENT = {"hmm": True, "user_dict": str(REPO / "data" / "jieba_userdict.txt"), "corpora": {}}
# Segmented as the `segment` stage writes them: words separated by spaces.
POSITIVE = ["质量 很 好", "非常 满意", "很 好 推荐", "满意 推荐", "好 好", "非常 好 推荐"]
NEGATIVE = ["质量 很 差", "非常 失望", "很 差 退货", "失望 退货", "差 差", "非常 差 退货"]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reviews(positive, negative) -> list:
    """prepare's corpora for the review route: the labelled file is passed but not read."""
    return [positive, negative, REPO / "data" / "examples" / "labelled_news.tsv"]


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
    trained = train_tiny(attention, tiny_config(), reviews(*corpora), root, segment=SEGMENT)
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
    counts = attention_data.prepare(tiny_config(), reviews(pos, neg), tmp_path / "out", SEGMENT)
    assert counts == {
        "lines": 9, "empty": 1, "duplicates": 2, "conflicting": 1,
        "train": 2, "validation": 1, "test": 1,
        "validation_overlap_dropped": 0, "test_overlap_dropped": 0,
    }  # fmt: skip
    sides = {
        side: {
            "".join(r.words) for r in attention.read_reviews(tmp_path / "out" / f"{side}.tsv", 2)
        }
        for side in ("train", "validation", "test")
    }
    assert sorted(set.union(*sides.values())) == sorted(["很好", "好啊", "很差", "太差"])


def test_no_held_out_review_is_seen_in_training_whatever_jieba_cut(tiny):
    # The tiny corpus repeats each review 4 times: one review, one side.
    sides = {
        side: [
            attention.review_key(r) for r in attention.read_reviews(tiny["data"] / f"{side}.tsv", 2)
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
    bad = write(tmp_path / "train.tsv", ["1\t很 好", "2\t好"])
    with pytest.raises(DataError, match=r"train.tsv:2: expected a label id 0..1<TAB>words"):
        attention.read_reviews(bad, 2)


def test_training_learns_the_tiny_reviews(tiny):
    classifier = attention.Classifier.load(
        tiny["model_dir"] / attention.MODEL_FILE, tiny["vocab"], max_words=100, batch_size=4
    )
    positive, negative = classifier.probabilities([["很", "好"], ["很", "差"]])[:, 1]
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


# -- a labelled file of your own ----------------------------------------------------------

# Raw texts of three labels with no words in common, cut by jieba; one text with a comma
# (quoted, as CSV wants it).
LABELLED = {
    "sport": [
        "球队赢了比赛",
        "球员进球了",
        "比赛很精彩",
        "教练换人",
        '"守门员扑救,观众欢呼"',
        "球迷唱歌",
    ],
    "money": ["股票上涨", "银行降息", "基金亏损", "汇率稳定", "债券发行", "利润增长"],
    "tech": ["手机发布", "芯片量产", "软件更新", "电脑升级", "网络提速", "程序崩溃"],
}


def labelled_csv(path, repeat: int = 2):
    rows = [f"{label},{text}" for label, texts in LABELLED.items() for text in texts]
    return write(path, ["label,text", *rows * repeat])


def labelled_config(**train) -> attention.Config:
    config = tiny_config()
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, source="labelled"),
        train=dataclasses.replace(config.train, **train),
    )


def test_labelled_files_read_as_tsv_or_csv_with_sorted_labels(tmp_path):
    tsv = write(tmp_path / "a.tsv", ["\ufefflabel\ttext", "b\t好,的", " a \t差", "c\t", "a\t一般"])
    labels, rows = attention_data.read_labelled(tsv)
    assert labels == ["a", "b", "c"]  # stripped, sorted: the ids do not hang on row order
    assert rows == [(1, "好,的"), (0, "差"), (2, ""), (0, "一般")]
    csv = write(tmp_path / "a.csv", ["label,text", 'pos,"好,很好"', "neg,差"])
    assert attention_data.read_labelled(csv) == (["neg", "pos"], [(1, "好,很好"), (0, "差")])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["text,label", "a,好"], r"x\.csv:1: expected the header label<TAB>text or label,text"),
        (["label,text", "a,好", ",差"], r"x\.csv:3: blank label; expected label,text"),
        (["label,text", "a,好", "b"], r"x\.csv:3: expected label,text \(2 columns\), got 1"),
        (["label,text", "a,好", "b,差,坏"], r"x\.csv:3: expected label,text \(2 columns\), got 3"),
        (["label,text", "a,好", "a,差"], r"x\.csv: expected at least 2 distinct labels, got 1"),
        (["label,text"], r"x\.csv: expected at least 2 distinct labels, got 0"),
    ],
)
def test_bad_labelled_file_is_one_line_naming_file_and_line(tmp_path, lines, message):
    bad = write(tmp_path / "x.csv", lines)
    with pytest.raises(DataError, match=message):
        attention_data.prepare(labelled_config(), [bad, bad, bad], tmp_path / "out", SEGMENT)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_tsv_row_without_its_text_column_names_file_and_line(tmp_path):
    bad = write(tmp_path / "x.tsv", ["label\ttext", "a\t好", "b 差"])
    with pytest.raises(DataError, match=r"x\.tsv:3: expected label<TAB>text \(2 columns\)"):
        attention_data.read_labelled(bad)


def test_two_labels_end_in_a_sigmoid_more_in_a_softmax():
    config = tiny_config().model
    assert attention.build_model(9, 2, config).output_shape == (None, 1)
    assert attention.build_model(9, 3, config).output_shape == (None, 3)
    assert attention.output_columns(["neg", "pos"]) == ["pos"]
    assert attention.output_columns(["a", "b", "c"]) == ["a", "b", "c"]


@pytest.fixture(scope="module")
def three_labels(tmp_path_factory):
    """prepare (jieba cuts the labelled file) -> vocab -> train -> baselines, one epoch each."""
    root = tmp_path_factory.mktemp("labelled")
    corpus = labelled_csv(root / "labelled.csv")
    config = labelled_config(epochs=1, patience=1)
    trained = train_tiny(attention, config, [corpus, corpus, corpus], root, segment=SEGMENT)
    trained["baselines"] = root / "baselines"
    attention.train_baselines(
        config, tiny_runtime(root), trained["data"], trained["vocab"], trained["baselines"], root
    )
    return trained


def test_three_labels_prepare_dedup_and_keep_their_names_with_the_model(three_labels):
    assert three_labels["counts"]["lines"] == 36 and three_labels["counts"]["duplicates"] == 18
    for folder in (three_labels["data"], three_labels["model_dir"]):
        assert attention.read_labels(folder) == ["money", "sport", "tech"]
    # jieba cut the texts: the vocabulary holds words, not whole lines.
    assert "球队" in attention.Vocabulary.load(three_labels["vocab"]).index
    assert three_labels["summary"]["train_reviews"] == 10


def test_three_labels_evaluate_in_label_names(three_labels, tmp_path):
    metrics, [acc] = attention.evaluate(
        three_labels["config"],
        three_labels["data"],
        three_labels["vocab"],
        three_labels["model_dir"],
        tmp_path / "plots",
        three_labels["baselines"],
    )
    assert metrics["test_reviews"] == len(acc.model) == 4 and metrics["test_overlap"] == 0
    assert set(acc.baselines) == {"no_pos", "bow"} and 0 <= metrics["agreement_no_pos"] <= 1
    confusion = json.loads((tmp_path / "plots" / "confusion.json").read_text())
    names = {"money", "sport", "tech"}
    assert all({row["actual"], row["predicted"]} <= names for row in confusion)


def test_three_labels_pyfunc_and_cli_answer_label_names(
    three_labels, tmp_path, mlflow_store, capsys
):
    jieba = JiebaSettings(hmm=True, user_dict=SEGMENT["user_dict"], corpora={})
    out = tmp_path / "pyfunc"
    with tracking.stage_run("attention", "export", {}, data_hash="h"):
        registry.export_pyfunc(
            out,
            attention.pyfunc(
                three_labels["config"], three_labels["vocab"], three_labels["model_dir"], jieba
            ),
        )
    model = mlflow.pyfunc.load_model(str(out))
    found = model.predict(pd.DataFrame({"text": ["球队赢了", "银行降息", ""]}))
    assert list(found.columns) == ["money", "sport", "tech"]
    assert found.sum(axis=1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert cli.main(["sentiment", "--model", str(out), "球队赢了"]) == 0
    probability, label = capsys.readouterr().out.strip().split("\t")
    assert label in {"money", "sport", "tech"} and 1 / 3 <= float(probability) <= 1


def test_first_words_cuts_a_prefix_into_the_whole_texts_first_words():
    from kexue.text.segmentation import Jieba

    jieba = Jieba(hmm=SEGMENT["hmm"], user_dict=SEGMENT["user_dict"])
    review = "质量很好，物流也快，推荐购买。" * 2000  # 28,000 characters
    assert attention.first_words(jieba, review, 100) == jieba.cut(review)[:100]
    assert attention.first_words(jieba, "  很好 ", 100) == jieba.cut("很好")  # shorter: all
    assert attention.first_words(jieba, "", 100) == []
