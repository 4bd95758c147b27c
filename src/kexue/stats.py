"""Differences between two systems on the same test items, with a paired bootstrap interval.

A metric is a function of totals over the test items: accuracy is the mean of per-item 0/1,
word F1 is 2 * correct / (predicted + gold) over summed per-sentence counts. Each system
keeps one row of values per item; resampling the items (the same draw for both systems,
hence "paired") gives the spread of the difference that another test set of the same size
and kind would show.
"""

from __future__ import annotations

import csv
import io as stdio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kexue import io

# A figure from the item totals (..., k) and the number of items drawn.
Statistic = Callable[[np.ndarray, int], np.ndarray]
# Metrics named like these are better lower; every other metric is better higher.
LOWER_IS_BETTER = ("error", "loss")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller `metric` is the better one (an error, a loss)."""
    return any(word in metric for word in LOWER_IS_BETTER)


def mean(totals: np.ndarray, n_items: int) -> np.ndarray:
    """The mean of a single per-item value (accuracy, a hit rate, a per-item score)."""
    return totals[..., 0] / n_items


def f1_from_counts(totals: np.ndarray, n_items: int) -> np.ndarray:
    """F1 from per-item (correct, predicted, gold) counts, pooled over the items."""
    correct, predicted, gold = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = predicted + gold
    return np.divide(2 * correct, denominator, out=np.zeros_like(correct), where=denominator > 0)


@dataclass(frozen=True)
class BootstrapConfig:
    samples: int  # resamples of the test items
    confidence: float  # of the interval, e.g. 0.95
    seed: int


@dataclass
class Scores:
    """Per-item values of one metric for the model and its baselines on the same items:
    arrays of shape (items,) or (items, k), in the same item order."""

    metric: str
    model: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    statistic: Statistic = mean


def _as_rows(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


def figure(values: np.ndarray, statistic: Statistic = mean) -> float:
    """The metric over all the items."""
    rows = _as_rows(values)
    return float(statistic(rows.sum(axis=0), len(rows)))


def model_figure(scores: list[Scores], metric: str) -> float:
    """The model's `metric` over all its items: the figure `comparisons` reports as `metric`."""
    for score in scores:
        if score.metric == metric:
            return figure(score.model, score.statistic)
    raise ValueError(f"no scores of {metric!r}; scored: {[s.metric for s in scores]}")


def paired_bootstrap(
    model: np.ndarray,
    baseline: np.ndarray,
    config: BootstrapConfig,
    statistic: Statistic = mean,
) -> tuple[float, float, float]:
    """(difference, low, high): the model's figure minus the baseline's over all items, and
    the percentile interval of that difference over `config.samples` paired resamples."""
    model_rows, baseline_rows = _as_rows(model), _as_rows(baseline)
    if model_rows.shape[0] != baseline_rows.shape[0]:
        raise ValueError(
            f"paired bootstrap: {model_rows.shape[0]} model items vs {baseline_rows.shape[0]}"
        )
    n = len(model_rows)
    difference = figure(model_rows, statistic) - figure(baseline_rows, statistic)
    rng = np.random.default_rng(config.seed)
    # How often each item is drawn in each resample: totals are then one matrix product.
    draws = rng.integers(0, n, size=(config.samples, n))
    counts = np.zeros((config.samples, n), dtype=np.float64)
    np.add.at(counts, (np.arange(config.samples)[:, None], draws), 1.0)
    resampled = statistic(counts @ model_rows, n) - statistic(counts @ baseline_rows, n)
    tail = (1 - config.confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return difference, float(low), float(high)


def comparisons(scores: list[Scores], config: BootstrapConfig) -> dict[str, float]:
    """Flat metrics keys for `dvc metrics show`: each figure over all items (`<metric>` for
    the model, `<metric>_<baseline>` for a baseline), how many items it is over
    (`<metric>_items`), each difference `<metric>_vs_<baseline>` (the model minus the
    baseline) and its interval's `_low` and `_high`."""
    flat = {}
    for score in scores:
        flat[score.metric] = figure(score.model, score.statistic)
        flat[f"{score.metric}_items"] = len(score.model)
        for name, baseline in score.baselines.items():
            flat[f"{score.metric}_{name}"] = figure(baseline, score.statistic)
            key = f"{score.metric}_vs_{name}"
            flat[key], flat[f"{key}_low"], flat[f"{key}_high"] = paired_bootstrap(
                score.model, baseline, config, score.statistic
            )
    return flat


def verdict(low: float, high: float) -> str:
    """Says "better" or "worse" by the interval; "no difference" when it holds 0."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no difference"


def write_items(path: str | Path, scores: list[Scores]) -> None:
    """The per-item values behind every figure, so any comparison can be redone from the
    file: a column `<metric>.<system>` (a count's columns end `.0`, `.1`, ...); a metric
    scored on fewer items than another leaves its column blank past its last item."""
    columns: dict[str, np.ndarray] = {}
    for score in scores:
        systems = {"model": score.model, **score.baselines}
        for name, values in systems.items():
            rows = _as_rows(values)
            for j in range(rows.shape[1]):
                suffix = f".{j}" if rows.shape[1] > 1 else ""
                columns[f"{score.metric}.{name}{suffix}"] = rows[:, j]
    length = max((len(v) for v in columns.values()), default=0)
    buffer = stdio.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["item", *columns])
    for i in range(length):
        writer.writerow([i, *(_cell(v, i) for v in columns.values())])
    io.write_text(path, buffer.getvalue())


def _cell(values: np.ndarray, i: int) -> str:
    if i >= len(values):
        return ""
    value = float(values[i])
    return str(int(value)) if value.is_integer() else f"{value:.6g}"
