"""Beam search over any next-token model, batched: the decoder is a function of the prefixes.

A hypothesis ends when the end token ranks among the `beam_width` best continuations; an
item is done once its best ended hypothesis scores at least as high as every live one (log
probabilities only fall as a sequence grows, so no live one can overtake it). After
`max_length` tokens the end token is forced, so every result ends by then. With
`beam_width=1` this is greedy decoding: the end token is taken only when it is the argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# next_log_probs(prefixes, items): log-probabilities (len(items) * beam_width, vocab) of the
# token after each prefix; prefixes are (len(items) * beam_width, t) ids, rows grouped by item
# (item i's beams are rows i*beam_width ... i*beam_width + beam_width - 1); `items` are the
# indices of the batch items still being decoded.
NextLogProbs = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]
    log_prob: float


def beam_search(
    next_log_probs: NextLogProbs,
    batch_size: int,
    beam_width: int,
    start_id: int,
    end_id: int,
    max_length: int,
) -> list[Hypothesis]:
    """The best sequence for each of `batch_size` items, without its start and end tokens."""
    if beam_width < 1 or max_length < 0:
        raise ValueError(
            f"need beam_width >= 1 and max_length >= 0, got {beam_width}, {max_length}"
        )
    prefixes = np.full((batch_size, beam_width, 1), start_id, dtype=np.int32)
    # One live beam at first, so the first step does not pick the same token K times.
    scores = np.full((batch_size, beam_width), -np.inf)
    scores[:, 0] = 0.0
    best: list[Hypothesis | None] = [None] * batch_size
    active = np.arange(batch_size)
    for step in range(max_length + 1):
        log_probs = next_log_probs(prefixes[active].reshape(len(active) * beam_width, -1), active)
        log_probs = log_probs.reshape(len(active), beam_width, -1)
        if step == max_length:  # a clear stop: nothing but the end token after max_length
            log_probs = np.where(np.arange(log_probs.shape[-1]) == end_id, log_probs, -np.inf)
        candidates = scores[active][:, :, None] + log_probs  # float64, as the scores
        _record_ended(candidates, prefixes[active], active, beam_width, end_id, best)
        prefixes, scores = _extend(candidates, prefixes, scores, active, beam_width, end_id)
        active = np.array(
            [i for i in active if best[i] is None or best[i].log_prob < scores[i].max()],
            dtype=np.int64,
        )
        if not len(active):
            break
    return [b if b is not None else Hypothesis([], -np.inf) for b in best]


def _top(flat: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, best first (ties: lower index first).

    A row holds beam_width x vocabulary candidates: only those at least as large as the
    row's k-th largest (found by a partition, not a sort) are sorted."""
    k = min(k, flat.shape[1])
    kth_largest = -np.partition(-flat, k - 1, axis=1)[:, k - 1]
    top = np.empty((len(flat), k), dtype=np.int64)
    for row, (values, threshold) in enumerate(zip(flat, kth_largest, strict=True)):
        (candidates,) = np.nonzero(values >= threshold)
        top[row] = candidates[np.argsort(-values[candidates], kind="stable")[:k]]
    return top


def _record_ended(candidates, prefixes, active, beam_width, end_id, best) -> None:
    """Keep, per item, the best hypothesis whose end token ranks among the top `beam_width`."""
    vocab = candidates.shape[-1]
    flat = candidates.reshape(len(active), -1)
    for row, (item, top) in enumerate(zip(active, _top(flat, beam_width), strict=True)):
        for index in top:
            beam, token = divmod(int(index), vocab)
            score = flat[row, index]
            ended = token == end_id and np.isfinite(score)
            if ended and (best[item] is None or score > best[item].log_prob):
                best[item] = Hypothesis(prefixes[row, beam, 1:].tolist(), float(score))


def _extend(candidates, prefixes, scores, active, beam_width, end_id):
    """The `beam_width` best live continuations of each active item, one token longer (the
    ended ones are masked in `candidates` itself: nothing reads it after)."""
    vocab = candidates.shape[-1]
    candidates[:, :, end_id] = -np.inf
    flat = candidates.reshape(len(active), -1)
    top = _top(flat, beam_width)
    beams, tokens = np.divmod(top, vocab)
    grown = np.concatenate(
        [
            np.take_along_axis(prefixes[active], beams[:, :, None], axis=1),
            tokens[:, :, None].astype(prefixes.dtype),
        ],
        axis=2,
    )
    new_prefixes = np.concatenate([prefixes, prefixes[:, :, -1:]], axis=2)
    new_prefixes[active] = grown
    new_scores = np.full_like(scores, -np.inf)
    new_scores[active] = np.take_along_axis(flat, top, axis=1)
    return new_prefixes, new_scores
