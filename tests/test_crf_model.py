"""The CNN+CRF segmenter end to end on tiny data: train, evaluate, segment raw text."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import tiny_corpus_lines, tiny_crf_config

from kexue import splits, stats
from kexue.datasets import crf as crf_data
from kexue.models import crf


def test_tiny_segmenter_learns_the_corpus(trained_crf, tmp_path):
    metrics, scores = crf.evaluate(
        trained_crf["config"],
        trained_crf["data"],
        trained_crf["vocab"],
        trained_crf["model_dir"],
        tmp_path,
    )
    assert metrics["test_overlap"] == 0
    assert set(metrics) >= {"precision", "recall", "precision_jieba", "recall_jieba"}
    [f1] = scores
    assert f1.metric == crf.SCORE and set(f1.baselines) == {"jieba"}
    n = metrics["test_sentences"]
    assert f1.model.shape == f1.baselines["jieba"].shape == (n, 3)
    assert f1.model[:, 2].sum() == metrics["test_words"]
    assert stats.figure(f1.model, f1.statistic) > 0.95
    # F1 pooled over the sentences' counts sits between precision and recall.
    low, high = sorted([metrics["precision"], metrics["recall"]])
    assert low <= stats.figure(f1.model, f1.statistic) <= high
    per_tag = json.loads((tmp_path / "tags.json").read_text())
    assert [row["tag"] for row in per_tag] == list("BMES")


def test_train_reports_the_validation_figures_that_chose(trained_crf):
    summary, counts = trained_crf["summary"], trained_crf["counts"]
    assert summary["validation_sentences"] == counts["validation_sentences"] > 0
    assert 1 <= summary["best_epoch"] <= trained_crf["config"].train.epochs
    assert {"best_loss", "best_val_loss"} <= set(summary)
    assert summary["validation_f1"] > 0.9


def test_prepare_splits_by_paragraph_without_overlap(tmp_path):
    """Paragraphs repeated word for word (a caption) and short sentences that recur: no
    held-out sentence, as the model sees it, occurs on an earlier side."""
    lines = tiny_corpus_lines(200, seed=3) + ["图书馆/n  很/d  好/a  。/w"] * 20
    lines += ["ＡＢ/x  。/w", "AB/x  。/w"] * 5  # one sentence once the model full-widths it
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tiny_crf_data(validation_fraction=0.1, test_fraction=0.2)
    counts = crf_data.prepare(config, [tmp_path / "corpus.txt"], tmp_path / "data")
    sides = {side: crf.read_sentences(tmp_path / "data" / f"{side}.txt") for side in splits.SPLITS}
    keys = {side: [crf.normalised(s) for s in rows] for side, rows in sides.items()}
    assert splits.overlap(keys["validation"], keys["train"]) == 0
    assert splits.overlap(keys["test"], keys["train"] + keys["validation"]) == 0
    assert counts["test_overlap_dropped"] > 0 and counts["validation_overlap_dropped"] > 0
    total = sum(len(rows) for rows in sides.values())
    assert total + counts["test_overlap_dropped"] + counts["validation_overlap_dropped"] == 230
    assert counts == crf_data.prepare(config, [tmp_path / "corpus.txt"], tmp_path / "again")
    for side in splits.SPLITS:
        assert (tmp_path / "again" / f"{side}.txt").read_bytes() == (
            tmp_path / "data" / f"{side}.txt"
        ).read_bytes()


def tiny_crf_data(**split) -> crf.Config:
    config = tiny_crf_config()
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **split))


def test_word_counts_per_sentence():
    counts = crf.word_counts([["我们", "喜欢"], ["好"]], [["我", "们", "喜欢"], ["好"]])
    np.testing.assert_array_equal(counts, [[1, 3, 2], [1, 1, 1]])
    assert stats.figure(counts, stats.f1_from_counts) == pytest.approx(2 * 2 / (4 + 3))


def test_segment_raw_text_keeps_every_character(trained_crf):
    segmenter = crf.Segmenter.load(
        trained_crf["model_dir"] / crf.MODEL_FILE, trained_crf["vocab"], 4
    )
    texts = ["我们喜欢北京公园。", "", "图书馆 很好", "散步"]
    words = segmenter.segment(texts)
    assert words[0] == ["我们", "喜欢", "北京", "公园", "。"]
    assert words[1] == []
    # Whitespace separates words and is dropped.
    assert words[2][0] == "图书馆" and "".join(words[2]) == "图书馆很好"
    assert words[3] == ["散步"]


def test_curves_have_one_row_per_epoch(trained_crf):
    lines = (trained_crf["root"] / "curves.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["epoch", "loss", "val_loss"]
    # Early stopping may end it sooner than the most epochs.
    assert (
        trained_crf["summary"]["best_epoch"] < len(lines) <= 1 + trained_crf["config"].train.epochs
    )


@pytest.mark.parametrize("text", ["龘龘龘", "ABC123", "。。。"])
def test_unknown_characters_still_segment(trained_crf, text):
    segmenter = crf.Segmenter.load(
        trained_crf["model_dir"] / crf.MODEL_FILE, trained_crf["vocab"], 4
    )
    assert "".join(segmenter.segment([text])[0]) == text
