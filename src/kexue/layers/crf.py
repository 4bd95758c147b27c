"""Linear-chain conditional random field, after "简明条件随机场CRF介绍(附带纯Keras实现)".

The layer is the identity on its input (per-position tag scores, the "emissions"); it owns
the tag transition matrix and provides the sequence-level loss (negative log-likelihood via
the forward algorithm) and Viterbi decoding. Padding is marked by tag -1 in `y_true` and by
a boolean `mask` at decoding time.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class CRF(keras.layers.Layer):
    """Holds transitions[i, j] = score of tag j following tag i."""

    def __init__(self, num_tags: int, **kwargs):
        # The forward algorithm sums exponentials: keep it in float32 under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_tags = int(num_tags)

    def build(self, input_shape):
        if input_shape[-1] != self.num_tags:
            raise ValueError(
                f"CRF expects {self.num_tags} tag scores per position, got {input_shape[-1]}"
            )
        self.transitions = self.add_weight(
            name="transitions", shape=(self.num_tags, self.num_tags), initializer="glorot_uniform"
        )

    def call(self, emissions):
        return ops.cast(emissions, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "num_tags": self.num_tags}

    # -- training ---------------------------------------------------------------------------

    def path_score(self, emissions, tags, mask):
        """Unnormalised score of the given tag paths: emissions plus transitions, (batch,)."""
        mask = ops.cast(mask, emissions.dtype)
        safe_tags = ops.where(mask > 0, tags, 0)
        one_hot = ops.one_hot(safe_tags, self.num_tags, dtype=emissions.dtype)
        emission_score = ops.sum(ops.sum(emissions * one_hot, axis=-1) * mask, axis=1)
        # transition_score[b, t] = transitions[tag_t, tag_{t+1}], counted where both are real.
        step = ops.einsum("bti,ij,btj->bt", one_hot[:, :-1], self.transitions, one_hot[:, 1:])
        transition_score = ops.sum(step * mask[:, 1:], axis=1)
        return emission_score + transition_score

    def log_partition(self, emissions, mask):
        """log Z: log-sum-exp over all tag paths (forward algorithm), (batch,)."""
        mask = ops.cast(mask, "bool")

        def step(alpha, inputs):
            emission_t, mask_t = _unpack_step(inputs)
            scores = ops.expand_dims(alpha, 2) + ops.expand_dims(self.transitions, 0)
            next_alpha = ops.logsumexp(scores, axis=1) + emission_t
            # Padding positions carry alpha through unchanged.
            alpha = ops.where(ops.expand_dims(mask_t, 1), next_alpha, alpha)
            return alpha, None

        alpha, _ = ops.scan(step, emissions[:, 0], _time_major_steps(emissions, mask))
        return ops.logsumexp(alpha, axis=1)

    def loss(self, y_true, y_pred):
        """Negative log-likelihood of each sequence; y_true holds tag ids, -1 for padding."""
        tags = ops.cast(y_true, "int32")
        mask = tags >= 0
        emissions = ops.cast(y_pred, "float32")
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    # -- inference --------------------------------------------------------------------------

    def decode(self, emissions, mask):
        """Viterbi: the highest-scoring tag path, (batch, time) int32, -1 at padding.

        Sequences are assumed left-aligned (padding only at the end).
        """
        emissions = ops.cast(emissions, "float32")
        mask = ops.cast(mask, "bool")
        identity = ops.broadcast_to(
            ops.arange(self.num_tags, dtype="int32"), ops.shape(emissions[:, 0])
        )

        # Keras' scan stacks outputs shaped like the carry, so the backpointers ride along in it.
        def forward(carry, inputs):
            score, _ = carry
            emission_t, mask_t = _unpack_step(inputs)
            scores = ops.expand_dims(score, 2) + ops.expand_dims(self.transitions, 0)
            best_previous = ops.cast(ops.argmax(scores, axis=1), "int32")
            next_score = ops.max(scores, axis=1) + emission_t
            keep = ops.expand_dims(mask_t, 1)
            carry = (ops.where(keep, next_score, score), ops.where(keep, best_previous, identity))
            return carry, carry

        steps = _time_major_steps(emissions, mask)
        (score, _), (_, backpointers) = ops.scan(forward, (emissions[:, 0], identity), steps)
        last_tag = ops.cast(ops.argmax(score, axis=1), "int32")

        def backward(tag, backpointer_t):
            previous = ops.take_along_axis(backpointer_t, ops.expand_dims(tag, 1), axis=1)[:, 0]
            return previous, tag

        first_tag, later_tags = ops.scan(backward, last_tag, backpointers, reverse=True)
        path = ops.concatenate(
            [ops.expand_dims(first_tag, 1), ops.moveaxis(later_tags, 0, 1)], axis=1
        )
        return ops.where(mask, path[:, :-1], -1)  # the last step is the extra masked one


def _time_major_steps(emissions, mask):
    """Positions 1.. as one (time, batch, tags + 1) tensor: scores plus the mask as a last
    channel, and one extra masked step so the scan never runs over zero steps (a length-1
    batch inside tf.function cannot stack an empty list). One tensor, because Keras' TF scan
    fails on several inputs of unknown length."""
    mask = ops.cast(ops.expand_dims(mask, -1), emissions.dtype)
    per_position = ops.concatenate([emissions, mask], axis=-1)
    masked_step = ops.zeros_like(per_position[:, :1])
    steps = ops.concatenate([per_position[:, 1:], masked_step], axis=1)
    return ops.moveaxis(steps, 1, 0)


def _unpack_step(step):
    return step[:, :-1], step[:, -1] > 0
