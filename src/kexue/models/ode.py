"""Fitting an ODE's parameters with an RNN, after "貌离神合的RNN与ODE：花式RNN简介".

The post's two-species competition model (layers/ode.py) is integrated by `keras.layers.RNN`
over a custom cell whose step is one Runge-Kutta (or Euler) step; the cell's weights are the
six parameters, so fitting them to a few observations is ordinary gradient descent through
the unrolled solver.

Data: the post's observations are values of this very model at t = 0, 10, 15, 30, 36, 40, 42
(params.yaml `ode.data.truth` reproduces its table to the printed precision), so `prepare`
generates them, with optional noise, and keeps the truth to score the fit. A CSV of your own
observations (`data.source: file`, the CSV `data.observations`: `t,x1,x2`, first row the
start) replaces them; then there is no truth to score.
`prepare` splits the observation times after the start into fitted (train), validation and
test times (kexue.splits); the start is always fitted, the fit begins from it.

Evaluate judges the fit only on what it was not fitted to: each parameter's relative error
against the truth, the trajectory past the last fitted time up to `evaluate.horizon` against
the truth (SCORE), and the held-out test times, if any. A reference fit by SciPy (least
squares over an adaptive ODE solver, from the same starting guesses, on the same fitted
observations) is scored on the same targets.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops

from kexue import io, serving, splits, stats, training
from kexue.datasets.ode import (
    COLUMNS,
    TRUTH,
    Config,
    ModelConfig,
    TrainConfig,
    exact_trajectory,
    load_observations,
)
from kexue.errors import DataError
from kexue.layers.ode import PARAMETERS, CompetitionODECell

MODEL_FILE = "model.keras"
START_FILE = "start.json"  # the first observation, where served trajectories begin
# Observations from a CSV have no truth: they are judged on this many held-out times at least.
MIN_TEST_TIMES = 2
# The champion predicts the truth best where it saw no data: R² of the trajectory past the
# last fitted time, up to evaluate.horizon (higher is better). R² on the fitted observations
# rewards nothing but fitting them; the parameter errors are reported beside it.
SCORE = "extrapolation_r2"
DESCRIPTION = (
    "Two-species competition ODE fitted to the post's observations (generated from its model, "
    "`ode.data`) through an RNN whose cell is a Runge-Kutta step (kexue.fm, 貌离神合的RNN与ODE). "
    "Input: a column `t` of times. Params: `x1`, `x2`, the "
    "populations at the first observed time (default: the observed ones). Output: columns "
    "`t`, `x1`, `x2`, the fitted model's populations at those times."
)


# -- model --------------------------------------------------------------------------------


def build_model(config: ModelConfig) -> keras.Model:
    """(step sizes (batch, steps, 1), start (batch, 2)) -> populations after each step."""
    steps = keras.Input(shape=(None, 1), name="steps")
    start = keras.Input(shape=(2,), name="start")
    cell = CompetitionODECell(config.initial, config.method, name="competition")
    trajectory = keras.layers.RNN(cell, return_sequences=True, name="solver")(
        steps, initial_state=[start]
    )
    return keras.Model([steps, start], trajectory, name="ode_rnn")


def fitted_parameters(model: keras.Model) -> dict[str, float]:
    cell = model.get_layer("solver").cell
    return {name: float(value) for name, value in cell.parameters().items()}


def solver_grid(times: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(step sizes, where each time lands): a grid from times[0] to times[-1] with steps of at
    most `step` that passes through every time; position j means the state after j steps."""
    times = np.asarray(times, dtype=np.float64)
    regular = np.arange(times[0], times[-1], step)
    grid = np.unique(np.concatenate([regular, times]))
    return np.diff(grid), np.searchsorted(grid, times)


@keras.saving.register_keras_serializable(package="kexue")
def relative_squared_error(y_true, y_pred):
    """Mean of ((prediction - observation) / observation)^2: both species count alike,
    whatever their size."""
    return ops.mean(ops.square(y_pred / y_true - 1), axis=-1)


def training_batch(observations: np.ndarray, step: float, scored: np.ndarray | None = None):
    """One batch, the whole trajectory from the first observation (the start): inputs,
    targets at every solver step (1 where there is no observation) and weights (1 where
    there is one). `scored` (rows t, x1, x2 after the start), when given, are the only
    observations weighted: the validation times on the fitted trajectory's grid."""
    rows = observations if scored is None else np.vstack([observations, scored])
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    steps, positions = solver_grid(rows[:, 0], step)
    targets = np.ones((len(steps), 2), dtype=np.float32)
    weights = np.zeros(len(steps), dtype=np.float32)
    weighted = rows[1:, 0] if scored is None else scored[:, 0]
    keep = np.isin(rows[1:, 0], weighted)
    targets[positions[1:] - 1] = rows[1:, 1:]
    weights[positions[1:][keep] - 1] = 1
    inputs = (steps[None, :, None].astype(np.float32), rows[None, 0, 1:].astype(np.float32))
    return inputs, targets[None], weights[None]


def use_xla(config: TrainConfig, strategy: tf.distribute.Strategy) -> bool:
    """XLA fuses the solver's hundreds of tiny ops per step into a few kernels; Keras runs a
    jit-compiled step on one replica only, so more replicas keep the plain graph."""
    return config.jit_compile and strategy.num_replicas_in_sync == 1


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path | None,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    """Fit the six parameters to the fitted (train) times; with validation times, their
    loss is logged and, with `patience`, stops the fit early."""
    strategy = training.setup(runtime)
    observations = load_observations(data_dir)
    validation = load_observations(data_dir, "validation")
    batch = tf.data.Dataset.from_tensors(training_batch(observations, config.model.step))
    validation_batch = (
        tf.data.Dataset.from_tensors(training_batch(observations, config.model.step, validation))
        if len(validation)
        else None
    )
    with strategy.scope():
        model = build_model(config.model)
        model.compile(
            # Decayed to zero: the six parameters sit in a long narrow valley (a1 and 1/N1
            # trade off), where a constant rate keeps Adam bouncing across it.
            optimizer=training.cosine_adam(
                config.train.learning_rate, config.train.epochs * config.train.steps_per_epoch
            ),
            loss=relative_squared_error,
            jit_compile=use_xla(config.train, strategy),
        )
    history = training.fit(
        model,
        batch.repeat(config.train.steps_per_epoch),
        validation_batch,
        epochs=config.train.epochs,
        curves_path=curves_file,
        backup_dir=Path(runtime.backup_dir),
        patience=config.train.patience,
    )
    training.save_model(model, model_dir / MODEL_FILE)
    io.write_json(model_dir / START_FILE, {"t": observations[0, 0], "x": list(observations[0, 1:])})
    fitted = {f"fit_{name}": value for name, value in fitted_parameters(model).items()}
    chosen = training.best_epoch(history) if validation_batch is not None else {}
    return {
        "fitted_times": len(observations) - 1,
        "validation_times": len(validation),
        "epochs_run": len(history.history["loss"]),
        "final_loss": history.history["loss"][-1],
        **chosen,
        **fitted,
    }


# -- inference ----------------------------------------------------------------------------


class Trajectory:
    """The fitted model as a function of time: populations at any times from the start."""

    def __init__(self, model: keras.Model, step: float):
        self.model = model
        self.step = step
        self._run = tf.function(lambda s, x0: model([s, x0], training=False), reduce_retracing=True)

    @classmethod
    def load(cls, model_file: Path | str, step: float) -> Trajectory:
        model = keras.models.load_model(model_file, compile=False)
        return cls(model, step)

    def at(self, t0: float, start, times) -> np.ndarray:
        """(len(times), 2) for times >= t0 in any order, starting from `start` at t0."""
        times = np.asarray(times, dtype=np.float64)
        order = np.argsort(times, kind="stable")
        grid_times = np.concatenate([[t0], times[order]])
        steps, positions = solver_grid(grid_times, self.step)
        states = np.asarray(start, dtype=np.float32)[None]
        if len(steps):
            path = self._run(
                tf.constant(steps[None, :, None], tf.float32), tf.constant(states)
            ).numpy()[0]
            states = np.concatenate([states, path])
        result = np.empty((len(times), 2), dtype=np.float64)
        result[order] = states[positions[1:]]
        return result


def r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination over both species, each centred on its own mean."""
    residual = np.sum((observed - predicted) ** 2)
    total = np.sum((observed - observed.mean(axis=0)) ** 2)
    return float(1 - residual / total)


def r2_items(observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(n, 6) per time point: the squared residuals of x1 and x2, x1, x2, x1², x2²; summed
    over any draw of the points they give that draw's R² (`r2_from_totals`)."""
    return np.column_stack([(observed - predicted) ** 2, observed, observed**2])


def r2_from_totals(totals: np.ndarray, n_items: int) -> np.ndarray:
    """`r2` from the totals of `r2_items` (a stats.Statistic): each species' total sum of
    squares is its sum of squares less n times its squared mean."""
    residual = totals[..., 0] + totals[..., 1]
    spread = totals[..., 4:6] - totals[..., 2:4] ** 2 / n_items
    return 1 - residual / spread.sum(axis=-1)


def relative_squared_errors(observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per time point, the mean over both species of the squared relative error."""
    return np.mean((predicted / observed - 1) ** 2, axis=1)


def reference_fit(
    observations: np.ndarray, initial: dict[str, float], search_range: float
) -> dict[str, float]:
    """SciPy's answer to the same question: least squares on the same relative residuals,
    through an adaptive solver, over the same log-scaled parameters from the same guesses.
    Bounded, because an unbounded search can wander into rates so large that the ODE turns
    stiff and the explicit solver crawls."""
    from scipy.optimize import least_squares

    times, start, observed = observations[:, 0], observations[0, 1:], observations[1:, 1:]

    def parameters(log_scales):
        return {
            name: initial[name] * math.exp(w)
            for name, w in zip(PARAMETERS, log_scales, strict=True)
        }

    def residuals(log_scales):
        states = exact_trajectory(parameters(log_scales), start, times)[1:]
        return (states / observed - 1).ravel()

    bound = math.log(search_range)
    solution = least_squares(residuals, np.zeros(len(PARAMETERS)), bounds=(-bound, bound))
    return parameters(solution.x)


def evaluate(
    config: Config, data_dir: Path, vocab_file: Path | None, model_dir: Path, plots_dir: Path
) -> tuple[dict[str, float], list[stats.Scores]]:
    """The fit and SciPy's reference fit of the same fitted observations, judged on what
    neither was fitted to: each parameter against the truth, the trajectory past the last
    fitted time against the truth (SCORE), the held-out test times. Observations from a CSV
    have no truth: SCORE is then the R² at the held-out test times.

    The per-item Scores of the trajectory are its time points, which are correlated (each
    follows from the one before): their bootstrap interval is narrower than the
    uncertainty of a fit, a description of this one trajectory, not of a population."""
    fitted_rows = load_observations(data_dir)
    test = load_observations(data_dir, "test")
    seen_times = np.concatenate(
        [fitted_rows[:, 0], load_observations(data_dir, "validation")[:, 0]]
    )
    truth = io.read_json(data_dir / TRUTH) if (data_dir / TRUTH).is_file() else None
    if truth is None and len(test) < MIN_TEST_TIMES:
        raise DataError(
            f"{data_dir}: observations from a CSV are judged on held-out times, and it holds "
            f"{len(test)}; expected at least {MIN_TEST_TIMES}: set ode.data.test_fraction"
        )
    trajectory = Trajectory.load(model_dir / MODEL_FILE, config.model.step)
    t0, start = fitted_rows[0, 0], fitted_rows[0, 1:]
    fitted = fitted_parameters(trajectory.model)
    reference = reference_fit(fitted_rows, config.model.initial, config.evaluate.reference_range)
    times = np.linspace(
        t0, max(config.evaluate.horizon, fitted_rows[-1, 0]), config.evaluate.points
    )
    curve = {
        "fit": trajectory.at(t0, start, times),
        "scipy": exact_trajectory(reference, start, times),
    }
    test_scores = []
    if len(test):
        scipy_at_test = exact_trajectory(reference, start, [t0, *test[:, 0]])[1:]
        fit_at_test = trajectory.at(t0, start, test[:, 0])
        test_scores.append(
            stats.Scores(
                "test_rel_sq_error",
                relative_squared_errors(test[:, 1:], fit_at_test),
                {"scipy": relative_squared_errors(test[:, 1:], scipy_at_test)},
            )
        )
    predicted = trajectory.at(t0, start, fitted_rows[1:, 0])
    metrics = {
        **{f"fit_{name}": value for name, value in fitted.items()},
        # How closely the fit follows the very observations it was fitted to: a diagnostic.
        "fitted_r2": r2(fitted_rows[1:, 1:], predicted),
        "test_times": len(test),
        "test_overlap": splits.overlap(test[:, 0].tolist(), seen_times.tolist()),
    }
    if truth is None:
        # No truth to extrapolate against: SCORE is the R² at the held-out times.
        scores = [
            stats.Scores(
                SCORE,
                r2_items(test[:, 1:], fit_at_test),
                {"scipy": r2_items(test[:, 1:], scipy_at_test)},
                statistic=r2_from_totals,
            ),
            *test_scores,
        ]
        write_plots(plots_dir, data_dir, times, curve)
        return metrics, scores
    true_params = truth["params"]
    curve["true"] = exact_trajectory(true_params, truth["start"], times)
    beyond = times > fitted_rows[-1, 0]
    if not beyond.any():
        raise DataError(
            f"params.yaml: ode.evaluate.horizon: {config.evaluate.horizon} is not past the last "
            f"fitted time {fitted_rows[-1, 0]:g}: nothing to extrapolate"
        )
    true_beyond = curve["true"][beyond]
    scores = [
        stats.Scores(
            SCORE,
            r2_items(true_beyond, curve["fit"][beyond]),
            {"scipy": r2_items(true_beyond, curve["scipy"][beyond])},
            statistic=r2_from_totals,
        ),
        stats.Scores(
            "extrapolation_rel_sq_error",
            relative_squared_errors(true_beyond, curve["fit"][beyond]),
            {"scipy": relative_squared_errors(true_beyond, curve["scipy"][beyond])},
        ),
        *test_scores,
    ]
    metrics.update(
        {
            **parameter_errors(fitted, true_params, ""),
            **parameter_errors(reference, true_params, "_scipy"),
            "extrapolation_points": int(beyond.sum()),
        }
    )
    write_plots(plots_dir, data_dir, times, curve)
    return metrics, scores


def parameter_errors(found: dict, truth: dict, suffix: str) -> dict[str, float]:
    """`param_error_<name><suffix>`: each parameter's relative error, and the largest."""
    errors = {name: abs(found[name] / truth[name] - 1) for name in PARAMETERS}
    return {
        **{f"param_error_{name}{suffix}": value for name, value in errors.items()},
        f"max_param_error{suffix}": max(errors.values()),
    }


def write_plots(plots_dir: Path, data_dir: Path, times: np.ndarray, curves: dict) -> None:
    """trajectory.csv (t, then x1 and x2 of each curve) and observed.csv (every split)."""
    columns = {"t": times}
    for name, states in curves.items():
        columns[f"{name}_x1"], columns[f"{name}_x2"] = states.T
    table = pd.DataFrame(columns).to_csv(index=False, float_format="%.4f", lineterminator="\n")
    io.write_text(plots_dir / "trajectory.csv", table)
    observed = pd.concat(
        pd.DataFrame(load_observations(data_dir, split), columns=COLUMNS).assign(split=split)
        for split in splits.SPLITS
    )
    io.write_text(
        plots_dir / "observed.csv",
        observed.to_csv(index=False, float_format="%.6f", lineterminator="\n"),
    )


# -- serving ------------------------------------------------------------------------------


class TrajectoryPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a column `t` of ascending times in (params x1, x2: the populations at
    the first observation's time; default, the observed ones); columns `t`, `x1`, `x2` out."""

    def load_context(self, context):
        self.settings = context.model_config
        self.trajectory = Trajectory.load(context.artifacts["model"], self.settings["step"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        settings = self.settings
        times = time_column(model_input, settings["t0"], settings["max_time"])
        if len(times) > settings["max_points"]:
            raise serving.bad_request(
                f"input has {len(times)} times; the limit per request is {settings['max_points']}"
            )
        start = [
            population(params, name, default)
            for name, default in zip(("x1", "x2"), settings["start"], strict=True)
        ]
        states = self.trajectory.at(settings["t0"], start, times)
        return pd.DataFrame({"t": times, "x1": states[:, 0], "x2": states[:, 1]})


def time_column(model_input, t0: float, max_time: float) -> np.ndarray:
    """The request's times: a column `t` (or a list) of ascending numbers in [t0, max_time].
    Unsorted times are refused rather than reordered: a caller who sent them so has most
    likely mixed up two columns, and rows out match rows in."""
    if isinstance(model_input, pd.DataFrame):
        if "t" not in model_input.columns:
            raise serving.bad_request(f"input has no column 't' (got {list(model_input.columns)})")
        values = model_input["t"].tolist()
    elif isinstance(model_input, (list, tuple, pd.Series, np.ndarray)):
        values = list(model_input)
    else:
        raise serving.bad_request(
            f"expected a column 't' of times, got {type(model_input).__name__}"
        )
    if not values:
        raise serving.bad_request("input has no rows; send at least one time 't'")
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise serving.bad_request(f"row {row}: 't' must be a number, got {value!r}")
        if not t0 <= value <= max_time:
            raise serving.bad_request(
                f"row {row}: 't' must be between {t0:g} and {max_time:g}, got {value!r}"
            )
        if row and value < values[row - 1]:
            raise serving.bad_request(
                f"row {row}: times must be ascending, got {value!r} after {values[row - 1]!r}"
            )
    return np.asarray(values, dtype=np.float64)


def population(params: dict | None, name: str, default: float) -> float:
    value = (params or {}).get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise serving.bad_request(f"{name} must be a positive number, got {value!r}")
    return float(value)


def input_example(
    config: Config, t0: float, start: list[float]
) -> tuple[pd.DataFrame, dict[str, float]]:
    """A request as a client sends one, saved beside the exported model: the populations at
    the first observed time and some later ones (within `serve.max_time`), from the
    observed start."""
    times = [min(t0 + offset, config.serve.max_time) for offset in (0.0, 10.0, 20.0)]
    return pd.DataFrame({"t": times}), {"x1": start[0], "x2": start[1]}


def pyfunc(config: Config, vocab_file: Path | None, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    first = io.read_json(model_dir / START_FILE)
    t0, start = float(first["t"]), [float(x) for x in first["x"]]
    return {
        "python_model": TrajectoryPyfunc(),
        "artifacts": {"model": str(model_dir / MODEL_FILE)},
        "model_config": {
            "step": config.model.step,
            "t0": t0,
            "start": start,
            "max_points": config.serve.max_points,
            "max_time": config.serve.max_time,
        },
        "signature": ModelSignature(
            inputs=Schema([ColSpec(DataType.double, "t")]),
            outputs=Schema([ColSpec(DataType.double, c) for c in COLUMNS]),
            params=ParamSchema(
                [
                    ParamSpec("x1", DataType.double, start[0]),
                    ParamSpec("x2", DataType.double, start[1]),
                ]
            ),
        ),
        "input_example": input_example(config, t0, start),
    }
