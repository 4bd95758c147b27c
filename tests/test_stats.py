"""The paired bootstrap on cases whose answer is known by hand."""

import numpy as np
import pytest

from kexue import stats

CONFIG = stats.BootstrapConfig(samples=2000, confidence=0.95, seed=0)


def test_identical_systems_differ_by_exactly_zero():
    right = np.random.default_rng(1).integers(0, 2, 400)
    assert stats.paired_bootstrap(right, right, CONFIG) == (0.0, 0.0, 0.0)


def test_right_wherever_the_other_is_wrong_is_above_zero():
    # The model is right on every item; the baseline on the first 70 of 100 only.
    model, baseline = np.ones(100), np.r_[np.ones(70), np.zeros(30)]
    difference, low, high = stats.paired_bootstrap(model, baseline, CONFIG)
    assert difference == pytest.approx(0.3)
    assert 0 < low < 0.3 < high <= 0.45
    assert stats.verdict(low, high) == "better"


def test_two_equally_good_systems_wrong_on_different_items_get_an_interval_around_zero():
    rng = np.random.default_rng(2)
    model = (rng.random(1000) < 0.8).astype(float)
    baseline = np.roll(model, 1)  # the same accuracy, right on other items
    difference, low, high = stats.paired_bootstrap(model, baseline, CONFIG)
    assert difference == pytest.approx(0.0)
    assert low < 0 < high
    assert stats.verdict(low, high) == "no difference"


def test_pairing_narrows_the_interval_of_correlated_systems():
    # Two systems that agree on 950 of 1000 items: the difference's spread comes from the 50.
    rng = np.random.default_rng(3)
    shared = (rng.random(1000) < 0.7).astype(float)
    model, baseline = shared.copy(), shared.copy()
    model[:50], baseline[:50] = 1, 0
    _, low, high = stats.paired_bootstrap(model, baseline, CONFIG)
    assert low > 0.035 and high < 0.065


def test_f1_pools_counts_before_dividing():
    # (correct, predicted, gold) per sentence: pooled F1 = 2*3/(4+4), not the mean of F1s.
    counts = np.array([[3, 3, 3], [0, 1, 1]], dtype=float)
    assert stats.figure(counts, stats.f1_from_counts) == pytest.approx(0.75)


def test_comparisons_write_figures_differences_and_intervals():
    scores = [stats.Scores("acc", np.ones(10), {"coin": np.r_[np.ones(5), np.zeros(5)]})]
    flat = stats.comparisons(scores, CONFIG)
    assert flat["acc"] == 1.0 and flat["acc_coin"] == 0.5 and flat["acc_items"] == 10
    assert flat["acc_vs_coin"] == pytest.approx(0.5)
    assert flat["acc_vs_coin_low"] <= 0.5 <= flat["acc_vs_coin_high"]


def test_items_file_keeps_every_systems_per_item_values(tmp_path):
    scores = [
        stats.Scores("acc", np.array([1, 0, 1]), {"base": np.array([0, 0, 1])}),
        stats.Scores("f1", np.array([[1, 2, 2]]), statistic=stats.f1_from_counts),
    ]
    stats.write_items(tmp_path / "items.csv", scores)
    lines = (tmp_path / "items.csv").read_text().splitlines()
    assert lines[0] == "item,acc.model,acc.base,f1.model.0,f1.model.1,f1.model.2"
    assert lines[1:] == ["0,1,0,1,2,2", "1,0,0,,,", "2,1,1,,,"]


def test_unpaired_lengths_are_refused():
    with pytest.raises(ValueError, match="3 model items vs 2"):
        stats.paired_bootstrap(np.ones(3), np.ones(2), CONFIG)
