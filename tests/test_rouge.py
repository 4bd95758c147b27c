"""Character ROUGE against hand-computed values, and the TF-IDF nearest-neighbour baseline."""

import pytest

from kexue.text import rouge
from kexue.text.tfidf import CharTfidf


def test_rouge_by_hand():
    # Reference 春日山行, candidate 山行春:
    #   unigrams: 3 shared, P = 3/3, R = 3/4          -> F = 6/7
    #   bigrams:  山行 shared, P = 1/2, R = 1/3        -> F = 2/5
    #   LCS:      山行 (2),    P = 2/3, R = 2/4        -> F = 4/7
    assert rouge.rouge_n("春日山行", "山行春", 1) == pytest.approx(6 / 7)
    assert rouge.rouge_n("春日山行", "山行春", 2) == pytest.approx(2 / 5)
    assert rouge.rouge_l("春日山行", "山行春") == pytest.approx(4 / 7)


def test_repeated_characters_count_at_most_as_often_as_in_the_reference():
    # 月月 vs 月月月: 2 of 3 candidate unigrams match, all of the reference's: F = 0.8.
    assert rouge.rouge_n("月月", "月月月", 1) == pytest.approx(0.8)
    assert rouge.lcs_length("月月", "月月月") == 2


def test_lcs_is_a_subsequence_not_a_substring():
    assert rouge.lcs_length("送友人歸山", "送人山") == 3
    assert rouge.lcs_length("abc", "") == 0


@pytest.mark.parametrize(("reference", "candidate"), [("春日", ""), ("", "春日"), ("春", "秋")])
def test_nothing_shared_scores_zero(reference, candidate):
    assert rouge.rouge_n(reference, candidate, 1) == 0.0
    assert rouge.rouge_l(reference, candidate) == 0.0


def test_mean_scores_average_each_pair():
    scores = rouge.mean_scores(["春日山行", "秋夜"], ["山行春", "秋夜"], prefix="x_")
    assert scores["x_rouge_1"] == pytest.approx((6 / 7 + 1) / 2)
    assert scores["x_rouge_2"] == pytest.approx((2 / 5 + 1) / 2)
    assert scores["x_rouge_l"] == pytest.approx((4 / 7 + 1) / 2)
    assert scores["x_exact"] == 0.5


def test_tfidf_finds_the_document_sharing_the_rarest_grams():
    documents = ["春風花草香", "秋月寒江冷", "大漠孤煙直", "春江花月夜"]
    tfidf = CharTfidf(documents, orders=[1, 2])
    assert tfidf.nearest(["寒江月", "孤煙", "花草香", "龘"]).tolist() == [1, 2, 0, 0]
    assert tfidf.nearest([]).tolist() == []
