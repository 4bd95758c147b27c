"""A variational autoencoder's Gaussian latent: the reparameterised sample and the KL term.

The encoder gives each input a diagonal Gaussian q(z|x) = N(mean, exp(log_var)); training
draws z = mean + exp(log_var / 2) * eps with eps ~ N(0, I), so gradients reach mean and
log_var, and pays the KL divergence from the prior N(0, I), in closed form:

    KL = -0.5 * sum_j (1 + log_var_j - mean_j^2 - exp(log_var_j))

which is 0 exactly when mean = 0 and log_var = 0 (q is the prior) and positive otherwise.
"""

from __future__ import annotations

import keras
from keras import ops


def kl_divergence(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) per row: (batch, latent) -> (batch,)."""
    return -0.5 * ops.sum(1 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


@keras.saving.register_keras_serializable(package="kexue")
class GaussianSample(keras.layers.Layer):
    """[mean, log_var] -> z: a reparameterised draw while training, the mean otherwise
    (reconstruction and interpolation want the code itself, not a noisy copy)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var = inputs
        if not training:
            return mean
        noise = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * noise

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="kexue")
class KLDivergence(keras.layers.Layer):
    """[mean, log_var] -> each row's KL divergence from N(0, I), an output the model's loss
    adds (see `as_loss`), so training logs it next to the reconstruction term. Give it
    dtype="float32" under mixed precision: exp(log_var) overflows float16 early."""

    def call(self, inputs):
        mean, log_var = inputs
        return kl_divergence(mean, log_var)

    def compute_output_shape(self, input_shape):
        return input_shape[0][:1]


@keras.saving.register_keras_serializable(package="kexue")
class WeightedOutput(keras.losses.Loss):
    """A loss that is the model's output itself (the KL term) times a weight the training
    can change as it goes (`KLWarmup`); the target is ignored."""

    def __init__(self, weight: float = 1.0, name: str = "weighted_output", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight = keras.Variable(float(weight), trainable=False, name="weight")

    def call(self, y_true, y_pred):
        return ops.cast(self.weight, y_pred.dtype) * y_pred

    def get_config(self):
        return {**super().get_config(), "weight": float(self.weight.numpy())}


class KLWarmup(keras.callbacks.Callback):
    """Raise the KL term's weight linearly from 0 to `target` over the first `steps` batches.
    With the full weight from the start, the KL term wins before the decoder has learnt to
    read the codes: the encoder gives up on them (posterior collapse) and every code decodes
    alike. The optimizer's step count drives it, so a resumed training picks up the ramp.

    Validation always weighs the KL at `target`: the validation loss is then the objective
    the ramp ends at, comparable from epoch to epoch (early stopping reads it)."""

    def __init__(self, loss: WeightedOutput, target: float, steps: int):
        super().__init__()
        self.loss, self.target, self.steps = loss, target, steps

    def on_train_batch_begin(self, batch, logs=None):
        done = int(self.model.optimizer.iterations.numpy())
        self.loss.weight.assign(self.target * min(1.0, done / max(1, self.steps)))

    def on_test_begin(self, logs=None):
        self.loss.weight.assign(self.target)
