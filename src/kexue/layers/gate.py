"""A feature gate, from the head of "基于fine tune的图像分类(百度分狗竞赛)".

The post weights the pooled features of the backbone by a gate computed from them before the
softmax; here the gate is a sigmoid of a dense layer, one weight per feature and image.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class FeatureGate(keras.layers.Layer):
    """features * sigmoid(features W + b): each pooled feature is weighted, per image, by a
    gate computed from all of them, so the head can damp channels that do not matter for
    the image at hand (e.g. background) before the softmax."""

    def build(self, input_shape):
        dim = input_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(dim, dim), initializer="glorot_uniform")
        # Gates start mostly open (sigmoid(2) ~ 0.88): the pretrained features pass at first.
        self.bias = self.add_weight(
            name="bias", shape=(dim,), initializer=keras.initializers.Constant(2.0)
        )

    def call(self, features):
        return features * ops.sigmoid(ops.matmul(features, self.kernel) + self.bias)

    def compute_output_shape(self, input_shape):
        return input_shape
