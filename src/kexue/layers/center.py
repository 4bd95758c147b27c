"""Center loss, from the head of "基于fine tune的图像分类(百度分狗竞赛)".

Center loss (Wen et al. 2016) pulls each image's feature vector towards a learned center of
its class, so classes form tight clusters and fine-grained breeds separate better than with
softmax alone:

    center_loss_b = 0.5 * |f_b - c_{y_b}|^2

As in the post, the centers are an embedding of the label, learned by gradient together with
the network (the paper updates them by a moving average instead); the training loss is the
softmax cross-entropy plus `weight` times the mean of this term.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class CenterLoss(keras.layers.Layer):
    """[features (batch, dim), labels (batch,)] -> 0.5 * |features - center[label]|^2 (batch,).

    Holds the class centers (num_classes, dim). The output is the per-image term; a model
    adds it to its loss (e.g. as an output whose loss is its own value).
    """

    def __init__(self, num_classes: int, **kwargs):
        # A sum of squares over ~1000 dims: keep it in float32 under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        features_shape, _ = input_shape
        self.centers = self.add_weight(
            name="centers", shape=(self.num_classes, features_shape[-1]), initializer="zeros"
        )

    def call(self, inputs):
        features, labels = inputs
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        centers = ops.take(self.centers, labels, axis=0)
        difference = ops.cast(features, self.compute_dtype) - centers
        return 0.5 * ops.sum(ops.square(difference), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0][:-1]

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
