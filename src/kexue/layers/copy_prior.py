"""A learned prior toward the input's own tokens, after "玩转Keras之seq2seq自动生成标题".

Most characters of a title also occur in its text. The layer turns the bag of input tokens
(1 where a token occurs in the input, 0 elsewhere) into prior logits with a learned scale
and shift per token, and averages them with the decoder's logits:

    prior[v]  = exp(log_scale[v]) * present[v] + shift[v]
    output    = (logits + prior) / 2
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class CopyPrior(keras.layers.Layer):
    """Inputs: [logits (batch, ..., vocab), input token ids (batch, time), 0 = padding]."""

    def __init__(self, vocab_size: int, **kwargs):
        # Logits feed a softmax: keep them in float32 under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)

    def build(self, input_shape):
        logits_shape, _ = input_shape
        if logits_shape[-1] != self.vocab_size:
            raise ValueError(
                f"CopyPrior expects {self.vocab_size} logits per position, got {logits_shape[-1]}"
            )
        self.log_scale = self.add_weight(
            name="log_scale", shape=(self.vocab_size,), initializer="zeros"
        )
        self.shift = self.add_weight(name="shift", shape=(self.vocab_size,), initializer="zeros")

    def present(self, token_ids):
        """(batch, vocab): 1.0 where the token occurs in the input; padding never does."""
        counts = ops.bincount(ops.cast(token_ids, "int32"), minlength=self.vocab_size)
        counts = counts[:, : self.vocab_size]
        not_padding = ops.cast(ops.arange(self.vocab_size) > 0, self.compute_dtype)
        return ops.cast(counts > 0, self.compute_dtype) * not_padding

    def prior(self, token_ids):
        return ops.exp(self.log_scale) * self.present(token_ids) + self.shift

    def call(self, inputs):
        logits, token_ids = inputs
        prior = self.prior(token_ids)
        # Broadcast over any positions between batch and vocab (one prior per input).
        for _ in range(len(logits.shape) - 2):
            prior = ops.expand_dims(prior, 1)
        return (ops.cast(logits, self.compute_dtype) + prior) / 2

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}
