"""Gated 1-D convolution (GCNN), as used in "基于CNN和VAE的作诗机器人：随机成诗" (kexue.fm, 2018).

One convolution produces twice the output channels; the first half is the signal, the second
a gate that decides how much of it passes (a GLU over a sequence):

    [a, b] = conv1d(x)            kernel `kernel_size`, 'same' padding, 2 * units channels
    y      = a * sigmoid(b)       (+ x with `residual`)

The gate lets a layer pass some positions' features through unchanged and damp others, which
is what a stack of such layers over a short line of characters needs.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class GatedConv1D(keras.layers.Layer):
    """(batch, steps, channels) -> (batch, steps, units); `units` defaults to the input's
    channels, which `residual` requires (the input is added to the output)."""

    def __init__(
        self,
        units: int | None = None,
        kernel_size: int = 3,
        residual: bool = False,
        use_bias: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
        self.units = None if units is None else int(units)
        self.kernel_size = int(kernel_size)
        self.residual = bool(residual)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.output_units = self.units if self.units is not None else channels
        if self.residual and self.output_units != channels:
            raise ValueError(
                f"residual needs units == the input's channels ({channels}), got {self.units}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, channels, 2 * self.output_units),
            initializer="glorot_uniform",
        )
        self.bias = (
            self.add_weight(name="bias", shape=(2 * self.output_units,), initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, inputs):
        both = ops.conv(inputs, self.kernel, strides=1, padding="same")
        if self.bias is not None:
            both = both + self.bias
        signal, gate = ops.split(both, 2, axis=-1)
        outputs = signal * ops.sigmoid(gate)
        return outputs + inputs if self.residual else outputs

    def compute_output_shape(self, input_shape):
        units = self.units if self.units is not None else input_shape[-1]
        return (*input_shape[:-1], units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_size": self.kernel_size,
            "residual": self.residual,
            "use_bias": self.use_bias,
        }
