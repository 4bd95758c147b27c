"""Capsules with dynamic routing, after "揭开迷雾，来一顿美味的Capsule盛宴" (kexue.fm, 2018).

A capsule is a vector whose length says how present a feature is and whose direction says
how it looks. Each input capsule u_i predicts every output capsule through its own matrix,
u_hat[j, i] = W u_i, and routing decides how much of each prediction reaches output j:

    b = 0
    repeat r times:
        c[j, i] = softmax over j of b[j, i]      each input splits itself among the outputs
        v[j]    = squash(sum_i c[j, i] u_hat[j, i])
        b[j, i] = <v[j], u_hat[j, i]>           (skipped after the last round)

As in the post, b is *replaced* by the agreement each round rather than accumulated (the
paper adds), which the post argues is the clustering the routing is meant to be; and squash
uses 0.5 where the paper has 1, which lets short vectors grow faster:

    squash(s) = |s|^2 / (0.5 + |s|^2) * s / |s|
"""

from __future__ import annotations

import keras
from keras import ops

SQUASH_EPSILON = 1e-7  # keeps |s| > 0 so s / |s| is defined for a zero vector


def squash(vectors, axis: int = -1):
    squared_norm = ops.sum(ops.square(vectors), axis=axis, keepdims=True) + SQUASH_EPSILON
    return vectors * ops.sqrt(squared_norm) / (0.5 + squared_norm)


@keras.saving.register_keras_serializable(package="kexue")
class Capsule(keras.layers.Layer):
    """(batch, input capsules, input dim) -> (batch, num_capsules, capsule_dim).

    With `share_weights` (the post's default) one matrix per output capsule serves every input
    capsule, so the layer works for any number of inputs; otherwise each (input, output) pair
    has its own matrix and the number of inputs is fixed at build time.
    """

    def __init__(
        self,
        num_capsules: int,
        capsule_dim: int,
        routings: int = 3,
        share_weights: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if routings < 1:
            raise ValueError(f"routings must be at least 1, got {routings}")
        self.num_capsules = int(num_capsules)
        self.capsule_dim = int(capsule_dim)
        self.routings = int(routings)
        self.share_weights = bool(share_weights)

    def build(self, input_shape):
        _, num_inputs, input_dim = input_shape
        inputs_axis = 1 if self.share_weights else num_inputs
        self.kernel = self.add_weight(
            name="kernel",
            shape=(inputs_axis, input_dim, self.num_capsules * self.capsule_dim),
            initializer="glorot_uniform",
        )

    def predictions(self, inputs):
        """u_hat: (batch, num_capsules, input capsules, capsule_dim)."""
        if self.share_weights:
            u_hat = ops.matmul(inputs, self.kernel[0])
        else:
            u_hat = ops.einsum("bid,ide->bie", inputs, self.kernel)
        batch, num_inputs = ops.shape(inputs)[0], ops.shape(inputs)[1]
        u_hat = ops.reshape(u_hat, (batch, num_inputs, self.num_capsules, self.capsule_dim))
        return ops.transpose(u_hat, (0, 2, 1, 3))

    def call(self, inputs):
        u_hat = self.predictions(inputs)
        logits = ops.zeros_like(u_hat[..., 0])  # b: (batch, num_capsules, input capsules)
        for round_ in range(self.routings):
            coupling = ops.softmax(logits, axis=1)
            outputs = squash(ops.einsum("bji,bjid->bjd", coupling, u_hat))
            if round_ < self.routings - 1:
                logits = ops.einsum("bjd,bjid->bji", outputs, u_hat)
        return outputs

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsules, self.capsule_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_capsules": self.num_capsules,
            "capsule_dim": self.capsule_dim,
            "routings": self.routings,
            "share_weights": self.share_weights,
        }


@keras.saving.register_keras_serializable(package="kexue")
class CapsuleLength(keras.layers.Layer):
    """(batch, capsules, dim) -> (batch, capsules): each capsule's length, the class score."""

    def call(self, capsules):
        return ops.sqrt(ops.sum(ops.square(capsules), axis=-1) + SQUASH_EPSILON)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]


@keras.saving.register_keras_serializable(package="kexue")
class MarginLoss(keras.losses.Loss):
    """The capsule paper's margin loss on class lengths; y_true is one-hot or multi-hot (two
    digits in one image are two targets):

        sum_k  y_k max(0, upper - len_k)^2 + down_weight (1 - y_k) max(0, len_k - lower)^2
    """

    def __init__(
        self,
        upper: float = 0.9,
        lower: float = 0.1,
        down_weight: float = 0.5,
        name: str = "margin",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.upper, self.lower, self.down_weight = float(upper), float(lower), float(down_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        present = y_true * ops.square(ops.relu(self.upper - y_pred))
        absent = self.down_weight * (1 - y_true) * ops.square(ops.relu(y_pred - self.lower))
        return ops.sum(present + absent, axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "upper": self.upper,
            "lower": self.lower,
            "down_weight": self.down_weight,
        }
