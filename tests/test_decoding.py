"""Beam search against hand-built decoders whose probabilities are known."""

import itertools

import numpy as np
import pytest

from kexue.decoding import beam_search

START, END, A, B = 2, 3, 4, 5
VOCAB = 6  # 0 pad and 1 unknown are never likely
# P(next token | tokens so far); prefixes not listed end at once.
TABLE = {
    (): {A: 0.6, B: 0.4},
    (A,): {END: 0.2, A: 0.45, B: 0.35},
    (B,): {END: 0.9, A: 0.05, B: 0.05},
    (A, A): {END: 0.5, A: 0.3, B: 0.2},
    (A, B): {END: 0.6, A: 0.2, B: 0.2},
}


def log_probs_of(table: dict, prefix: tuple) -> np.ndarray:
    probs = np.full(VOCAB, 1e-12)
    for token, p in table.get(prefix, {END: 1.0}).items():
        probs[token] = p
    return np.log(probs)


def table_decoder(table: dict, calls: list | None = None):
    def next_log_probs(prefixes: np.ndarray, items: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(items.tolist())
        return np.stack([log_probs_of(table, tuple(row[1:])) for row in prefixes.tolist()])

    return next_log_probs


def greedy(table: dict, max_length: int) -> list[int]:
    tokens: list[int] = []
    for _ in range(max_length):
        token = int(np.argmax(log_probs_of(table, tuple(tokens))))
        if token == END:
            return tokens
        tokens.append(token)
    return tokens


def sequence_log_prob(table: dict, tokens: list[int]) -> float:
    steps = [log_probs_of(table, tuple(tokens[:i]))[t] for i, t in enumerate([*tokens, END])]
    return float(sum(steps))


def test_beam_finds_the_best_sequence_greedy_misses():
    # Greedy: A (0.6), A (0.45), end (0.5) = 0.135; the best is B, end = 0.4 * 0.9 = 0.36.
    assert greedy(TABLE, 5) == [A, A]
    (best,) = beam_search(table_decoder(TABLE), 1, 2, START, END, max_length=5)
    assert best.tokens == [B]
    assert best.log_prob == pytest.approx(np.log(0.36))


def test_beam_width_one_is_greedy():
    (best,) = beam_search(table_decoder(TABLE), 1, 1, START, END, max_length=5)
    assert best.tokens == greedy(TABLE, 5) == [A, A]
    assert best.log_prob == pytest.approx(np.log(0.6 * 0.45 * 0.5))


@pytest.mark.parametrize("seed", range(5))
def test_random_decoders_greedy_and_exhaustive(seed):
    """Width 1 matches greedy; a beam wider than every set of prefixes is exact."""
    rng = np.random.default_rng(seed)
    table = {
        prefix: dict(zip([END, A, B], rng.dirichlet([1.0, 1.0, 1.0]), strict=True))
        for length in range(4)
        for prefix in itertools.product([A, B], repeat=length)
    }
    max_length = 3
    (width_one,) = beam_search(table_decoder(table), 1, 1, START, END, max_length)
    assert width_one.tokens == greedy(table, max_length)
    candidates = [
        list(c) for n in range(max_length + 1) for c in itertools.product([A, B], repeat=n)
    ]
    best = max(candidates, key=lambda c: sequence_log_prob(table, c))
    (wide,) = beam_search(table_decoder(table), 1, 2**max_length, START, END, max_length)
    assert wide.tokens == best
    assert wide.log_prob == pytest.approx(sequence_log_prob(table, best))


def test_max_length_forces_the_end():
    rarely_ends = {(): {A: 0.999, END: 0.001}, (A,): {A: 0.999, END: 0.001}}
    rarely_ends[(A, A)] = {A: 0.99, END: 0.01}
    (best,) = beam_search(table_decoder(rarely_ends), 1, 2, START, END, max_length=2)
    assert best.tokens == [A, A]
    assert best.log_prob == pytest.approx(np.log(0.999 * 0.999 * 0.01))


def test_batch_items_are_independent_and_finished_items_drop_out():
    calls: list = []

    def by_item(prefixes, items):
        # Item 0 follows TABLE; item 1 always prefers to end at once.
        rows = table_decoder(TABLE, calls)(prefixes, items)
        beams = len(prefixes) // len(items)
        for i, item in enumerate(items):
            if item == 1:
                rows[i * beams : (i + 1) * beams] = np.log([1e-9, 1e-9, 1e-9, 0.8, 0.1, 0.1])
        return rows

    first, second = beam_search(by_item, 2, 2, START, END, max_length=5)
    assert first.tokens == [B] and second.tokens == []
    assert calls[0] == [0, 1] and all(call == [0] for call in calls[1:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="beam_width >= 1"):
        beam_search(table_decoder(TABLE), 1, 0, START, END, 5)
