"""Additive-margin softmax (AM-Softmax), after "基于GRU和AM-Softmax的句子相似度模型".

AM-Softmax (Wang et al. 2018, from face recognition) trains an embedding by classification
but makes the classes separable by angle alone, so cosine similarity can later compare inputs
from classes never seen in training:

    cos[b, c] = <x_b / |x_b|, w_c / |w_c|>                        (AMSoftmax, the layer)
    loss_b    = -log softmax(s * (cos[b] - m * onehot(y_b)))[y_b]  (AMSoftmaxLoss)

The margin `m` is subtracted from the target class's cosine only: the target must beat every
other class by `m` in cosine before the loss lets go. The scale `s` sharpens the softmax, which
cosines in [-1, 1] alone could never make confident.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class AMSoftmax(keras.layers.Layer):
    """Holds one weight vector per class; outputs the cosine of the input with each class."""

    def __init__(self, num_classes: int, **kwargs):
        # Cosines are scaled by s (~30) before a softmax: keep them in float32.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        self.class_weights = self.add_weight(
            name="class_weights",
            shape=(input_shape[-1], self.num_classes),
            initializer="glorot_uniform",
        )

    def call(self, features):
        # ops.normalize leaves a zero vector (an empty text) at zero instead of dividing by 0.
        features = ops.normalize(ops.cast(features, self.compute_dtype), axis=-1)
        return ops.matmul(features, ops.normalize(self.class_weights, axis=0))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="kexue")
class AMSoftmaxLoss(keras.losses.Loss):
    """Cross-entropy of s * (cosines - m on the target class); y_true holds class ids."""

    def __init__(self, scale: float, margin: float, name: str = "am_softmax", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        cosines = ops.cast(y_pred, "float32")
        labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(cosines)[:-1])
        target = ops.one_hot(labels, ops.shape(cosines)[-1], dtype="float32")
        logits = self.scale * (cosines - self.margin * target)
        return keras.losses.categorical_crossentropy(target, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}
