"""The CNN+CRF segmenter end to end on tiny data: train, evaluate, segment raw text."""

import json

import pytest

from kexue.models import crf


def test_tiny_segmenter_learns_the_corpus(trained_crf, tmp_path):
    metrics = crf.evaluate(
        trained_crf["config"],
        trained_crf["data"],
        trained_crf["vocab"],
        trained_crf["model_dir"],
        tmp_path,
    )
    assert metrics["f1"] > 0.95
    assert set(metrics) >= {"precision", "recall", "jieba_precision", "jieba_recall", "jieba_f1"}
    per_tag = json.loads((tmp_path / "tags.json").read_text())
    assert [row["tag"] for row in per_tag] == list("BMES")


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
    assert len(lines) == 1 + trained_crf["config"].train.epochs


@pytest.mark.parametrize("text", ["龘龘龘", "ABC123", "。。。"])
def test_unknown_characters_still_segment(trained_crf, text):
    segmenter = crf.Segmenter.load(
        trained_crf["model_dir"] / crf.MODEL_FILE, trained_crf["vocab"], 4
    )
    assert "".join(segmenter.segment([text])[0]) == text
