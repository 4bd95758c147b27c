"""Multi-head scaled dot-product attention and sinusoidal position embedding, as written in
"《Attention is All You Need》浅读(简介+代码)" (kexue.fm, 2018), in Keras 3.

Both layers follow Keras masking: give the embedding `mask_zero=True` and padding is never
attended (keys) and comes out as zeros (queries).
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class PositionEmbedding(keras.layers.Layer):
    """Sinusoidal position embedding: position p gets [cos(p w_j) ..., sin(p w_j) ...] with
    w_j = 10000^(-2j/size), j < size/2, as in the post. `mode="sum"` adds it to the input
    (size = the input's width), `mode="concat"` appends it (size of its own)."""

    def __init__(self, size: int | None = None, mode: str = "sum", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("sum", "concat"):
            raise ValueError(f"mode must be 'sum' or 'concat', got {mode!r}")
        if mode == "concat" and size is None:
            raise ValueError("mode='concat' needs a size")
        self.size, self.mode = size, mode
        self.supports_masking = True

    def build(self, input_shape):
        width = self.size if self.size is not None else input_shape[-1]
        if width % 2:
            raise ValueError(f"position embedding size must be even, got {width}")
        if self.mode == "sum" and width != input_shape[-1]:
            raise ValueError(f"mode='sum' needs size {input_shape[-1]} (the input's), got {width}")
        self.width = width

    def call(self, inputs):
        length = ops.shape(inputs)[1]
        positions = ops.cast(ops.arange(length), self.compute_dtype)
        frequencies = ops.power(
            10000.0, -2.0 * ops.arange(self.width // 2, dtype="float32") / self.width
        )
        angles = positions[:, None] * ops.cast(frequencies, self.compute_dtype)[None, :]
        table = ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1)[None]
        table = ops.cast(table, inputs.dtype)
        if self.mode == "sum":
            return inputs + table
        batch_table = ops.broadcast_to(table, (ops.shape(inputs)[0], length, self.width))
        return ops.concatenate([inputs, batch_table], axis=-1)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        if self.mode == "sum":
            return input_shape
        return (*input_shape[:-1], input_shape[-1] + self.width)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mode": self.mode}


@keras.saving.register_keras_serializable(package="kexue")
class MultiHeadAttention(keras.layers.Layer):
    """The post's multi-head attention: Q, K, V projected (no bias) into `heads` heads of
    `size_per_head`, softmax(Q K^T / sqrt(size_per_head)) V per head, heads concatenated.

    Call it on one tensor (self-attention) or on [queries, keys, values]. Keys under a
    padding mask get no weight; outputs at padded queries are zero.
    """

    def __init__(self, heads: int, size_per_head: int, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.size_per_head = heads, size_per_head
        self.output_dim = heads * size_per_head
        self.supports_masking = True

    def build(self, input_shape):
        shapes = input_shape if _is_shape_list(input_shape) else [input_shape] * 3
        self.projections = [
            self.add_weight(
                name=name, shape=(shape[-1], self.output_dim), initializer="glorot_uniform"
            )
            for name, shape in zip(("query", "key", "value"), shapes, strict=True)
        ]

    def call(self, inputs, mask=None):
        queries, keys, values = inputs if isinstance(inputs, list) else [inputs] * 3
        query_mask, key_mask = _query_and_key_masks(mask)
        q, k, v = (
            self._split_heads(ops.matmul(x, w))
            for x, w in zip((queries, keys, values), self.projections, strict=True)
        )
        # (batch, heads, queries, keys)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(self.size_per_head)
        if key_mask is not None:
            # A large finite negative (not -inf): a row with every key padded stays finite.
            scores = ops.where(key_mask[:, None, None, :], scores, _most_negative(scores.dtype))
        weights = ops.softmax(scores, axis=-1)
        outputs = self._merge_heads(ops.matmul(weights, v))
        if query_mask is not None:
            outputs = outputs * ops.cast(query_mask, outputs.dtype)[:, :, None]
        return outputs

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, self.heads, self.size_per_head))
        return ops.transpose(x, (0, 2, 1, 3))

    def _merge_heads(self, x):
        x = ops.transpose(x, (0, 2, 1, 3))
        return ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.output_dim))

    def compute_mask(self, inputs, mask=None):
        return _query_and_key_masks(mask)[0]

    def compute_output_shape(self, input_shape):
        query_shape = input_shape[0] if _is_shape_list(input_shape) else input_shape
        return (*query_shape[:-1], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "size_per_head": self.size_per_head}


def _is_shape_list(shape) -> bool:
    """True for [queries, keys, values] shapes; a saved shape comes back as a list itself."""
    return isinstance(shape, (list, tuple)) and isinstance(shape[0], (list, tuple))


def _query_and_key_masks(mask):
    """(query mask, key mask) from Keras' mask of one input or of [queries, keys, values]."""
    if isinstance(mask, (list, tuple)):
        return mask[0], mask[1]
    return mask, mask


def _most_negative(dtype) -> float:
    """A score that softmax turns into a zero weight, finite in float16 (mixed precision) too."""
    return -3.0e4 if "float16" in str(dtype) else -1.0e9
