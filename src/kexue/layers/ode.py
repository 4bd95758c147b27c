"""An RNN cell that integrates an ODE, after "貌离神合的RNN与ODE：花式RNN简介" (kexue.fm, 2018).

An RNN's recurrence x_{n+1} = f(x_n, input_n) is exactly one step of a numerical ODE solver
when f is the solver's step and the input is the step size. `keras.layers.RNN(cell)` then
integrates the ODE, and the ODE's parameters are the cell's trainable weights: fitting them to
observations is ordinary gradient descent through the unrolled solver.

The ODE is the post's two-species competition model:
    dx1/dt = r1 x1 (1 - x1 / N1) - a1 x1 x2
    dx2/dt = r2 x2 (1 - x2 / N2) - a2 x1 x2
"""

from __future__ import annotations

import keras
from keras import ops

from kexue.datasets.ode import PARAMETERS

METHODS = ("euler", "rk4")


def competition(x, params: dict):
    """dx/dt of the competition model; x is (batch, 2), params hold scalars or tensors."""
    x1, x2 = x[:, 0:1], x[:, 1:2]
    dx1 = params["r1"] * x1 * (1 - x1 * params["inv_n1"]) - params["a1"] * x1 * x2
    dx2 = params["r2"] * x2 * (1 - x2 * params["inv_n2"]) - params["a2"] * x1 * x2
    return ops.concatenate([dx1, dx2], axis=-1)


def solver_step(derivative, x, dt, method: str):
    """One Euler or classical Runge-Kutta (RK4) step of dx/dt = derivative(x) of size dt."""
    if method == "euler":
        return x + dt * derivative(x)
    k1 = derivative(x)
    k2 = derivative(x + dt / 2 * k1)
    k3 = derivative(x + dt / 2 * k2)
    k4 = derivative(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@keras.saving.register_keras_serializable(package="kexue")
class CompetitionODECell(keras.layers.Layer):
    """State: the two populations. Input per step: the step size dt, shape (batch, 1).
    Output per step: the populations after the step.

    Each parameter is `initial * exp(w)` with a trainable w starting at 0: the six parameters
    span four orders of magnitude (r ~ 0.1, a ~ 1e-4), and on a log scale one learning rate
    suits them all; they also stay positive, as the model needs.
    """

    def __init__(self, initial: dict[str, float], method: str = "rk4", **kwargs):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        missing = set(PARAMETERS) - set(initial)
        if missing:
            raise ValueError(f"initial values missing for {sorted(missing)}")
        self.initial = {name: float(initial[name]) for name in PARAMETERS}
        self.method = method
        self.state_size = 2
        self.output_size = 2

    def build(self, input_shape):
        self.log_scales = {
            name: self.add_weight(name=f"log_{name}", shape=(), initializer="zeros")
            for name in PARAMETERS
        }

    def parameters(self) -> dict:
        return {name: self.initial[name] * ops.exp(w) for name, w in self.log_scales.items()}

    def call(self, inputs, states):
        params = self.parameters()
        x = solver_step(lambda x: competition(x, params), states[0], inputs, self.method)
        return x, [x]

    def get_config(self):
        return {**super().get_config(), "initial": self.initial, "method": self.method}
