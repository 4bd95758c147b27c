"""ROUGE-N and ROUGE-L F-measures over characters (Chinese text has no spaces to split on).

F is the harmonic mean of precision (overlap / candidate length) and recall (overlap /
reference length); an empty candidate or reference scores 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def f_measure(overlap: int, candidate_size: int, reference_size: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / candidate_size, overlap / reference_size
    return 2 * precision * recall / (precision + recall)


def ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def rouge_n(reference: str, candidate: str, n: int) -> float:
    """Overlap of character n-grams, each counted at most as often as in the reference."""
    reference_grams, candidate_grams = ngrams(reference, n), ngrams(candidate, n)
    overlap = sum((reference_grams & candidate_grams).values())
    return f_measure(overlap, sum(candidate_grams.values()), sum(reference_grams.values()))


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for char_a in a:
        current = [0]
        for j, char_b in enumerate(b, start=1):
            current.append(
                previous[j - 1] + 1 if char_a == char_b else max(previous[j], current[-1])
            )
        previous = current
    return previous[-1]


def rouge_l(reference: str, candidate: str) -> float:
    return f_measure(lcs_length(reference, candidate), len(candidate), len(reference))


def mean_scores(references: Sequence[str], candidates: Sequence[str], prefix: str = "") -> dict:
    """Mean ROUGE-1/2/L F and exact-match rate of candidates against their references."""
    if not references:
        raise ValueError("no references to score against")
    pairs = list(zip(references, candidates, strict=True))
    scores = {
        "rouge_1": [rouge_n(r, c, 1) for r, c in pairs],
        "rouge_2": [rouge_n(r, c, 2) for r, c in pairs],
        "rouge_l": [rouge_l(r, c) for r, c in pairs],
        "exact": [float(r == c) for r, c in pairs],
    }
    return {f"{prefix}{name}": sum(values) / len(values) for name, values in scores.items()}
