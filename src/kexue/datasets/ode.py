"""The ode model's params block and its data: observations of the post's competition model,
generated or read from a CSV, split by time into train / validation / test.

Imports no TensorFlow: the prepare and vocab stages start without it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kexue import io, splits
from kexue.errors import DataError

# The competition model's parameters, as `ode.data.truth` names them.
PARAMETERS = ("r1", "r2", "a1", "a2", "inv_n1", "inv_n2")  # inv_n = 1/N
TRUTH = "truth.json"
COLUMNS = ("t", "x1", "x2")


@dataclass(frozen=True)
class DataConfig(splits.SplitConfig):
    """Where the observations come from, what generates them, and the fractions of the times
    after the start held out for validation and test."""

    source: Literal["generated", "file"]  # generated from `truth`, or read from `observations`
    observations: str  # a t,x1,x2 CSV (read when source is file)
    truth: dict[str, float]  # the parameters that generate the observations
    start: list[float]  # x1, x2 at the first time
    times: list[float]  # observation times, ascending; the first is the start
    noise: float  # relative standard deviation of Gaussian noise on the observations
    seed: int


@dataclass(frozen=True)
class ModelConfig:
    method: Literal["euler", "rk4"]
    step: float  # the solver's largest step; observation times are always hit exactly
    initial: dict[str, float]  # starting guesses of the six parameters


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    steps_per_epoch: int  # gradient steps on the one trajectory per epoch
    learning_rate: float
    patience: int | None  # early stopping on the validation times' loss (needs some)
    jit_compile: bool  # compile the training step with XLA (single replica only)


@dataclass(frozen=True)
class EvaluateConfig:
    horizon: float  # the fit is compared with the truth up to this time (past the data)
    points: int  # points of the trajectory plot
    reference_range: float  # SciPy's fit searches initial / range .. initial * range


@dataclass(frozen=True)
class ServeConfig:
    max_points: int  # times per request
    max_time: float  # latest time a request may ask for (the solver steps up to it)


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    serve: ServeConfig
    registered_name: str


# -- data ---------------------------------------------------------------------------------


def competition_rhs(params: dict[str, float]):
    """dx/dt as SciPy's solvers want it: f(t, x) for one state x of shape (2,)."""

    def rhs(_t, x):
        x1, x2 = x
        return [
            params["r1"] * x1 * (1 - x1 * params["inv_n1"]) - params["a1"] * x1 * x2,
            params["r2"] * x2 * (1 - x2 * params["inv_n2"]) - params["a2"] * x1 * x2,
        ]

    return rhs


def exact_trajectory(params: dict[str, float], start, times) -> np.ndarray:
    """(len(times), 2): the ODE solved to near machine precision (DOP853, tight tolerances)."""
    from scipy.integrate import solve_ivp

    times = np.asarray(times, dtype=np.float64)
    solution = solve_ivp(
        competition_rhs(params),
        (times[0], times[-1]),
        np.asarray(start, dtype=np.float64),
        method="DOP853",
        t_eval=times,
        rtol=1e-10,
        atol=1e-10,
    )
    if not solution.success:
        raise DataError(f"the ODE solver failed: {solution.message}")
    return solution.y.T


def inputs(config: Config, corpora: list[Path]) -> list[Path]:
    """What `prepare` reads: the CSV, or nothing for observations generated from params."""
    return [] if config.data.source == "generated" else corpora


def prepare(config: Config, corpora: list[Path], out_dir: Path) -> dict[str, int]:
    """Observations (and the truth, when generated) -> out_dir/train.csv (the start and the
    fitted times), validation.csv, test.csv (held-out times; header only when none), truth.json.

    `corpora` is the observations CSV, read when `data.source` is `file` (the pipeline always
    passes it: a stage's dependencies cannot follow a switch). Everything is read and split
    before the first file is written."""
    generated = config.data.source == "generated"
    if generated:
        observations = generate(config.data)
        where = "params.yaml: ode.data.times"
    elif len(corpora) != 1:
        raise DataError(
            f"ode.data.source is file: expected one observations CSV, got {len(corpora)}"
        )
    else:
        observations = read_observations(corpora[0])
        where = str(corpora[0])
    sides = split_times(observations, config.data, where)
    if generated:
        io.write_json(out_dir / TRUTH, {"params": config.data.truth, "start": config.data.start})
    else:
        (out_dir / TRUTH).unlink(missing_ok=True)
    for name, rows in sides.items():
        write_observations(out_dir / f"{name}.csv", rows)
    return {
        "observations": len(observations),
        "generated": int(generated),
        **{f"{name}_times": len(rows) for name, rows in sides.items()},
    }


def split_times(observations: np.ndarray, config: splits.SplitConfig, where: str) -> dict:
    """{"train", "validation", "test"}: rows of the observations, ascending in time; every
    time after the start is a group of its own; the start is always in train."""
    sides = splits.split_groups(list(observations[1:]), lambda row: float(row[0]), config, where)
    sides["train"] = [observations[0], *sides["train"]]
    return {
        name: np.array(sorted(rows, key=lambda row: row[0])).reshape(-1, len(COLUMNS))
        for name, rows in sides.items()
    }


def generate(data: DataConfig) -> np.ndarray:
    """(n, 3) rows of t, x1, x2 from the truth, times relative Gaussian noise (not the start)."""
    missing = sorted(set(PARAMETERS) - set(data.truth))
    if missing:
        raise DataError(f"params.yaml: ode.data.truth: missing {missing[0]}")
    _check_times(data.times, "params.yaml: ode.data.times")
    states = exact_trajectory(data.truth, data.start, data.times)
    noise = np.random.default_rng(data.seed).standard_normal(states.shape) * data.noise
    noise[0] = 0  # the start is known: the fit begins from it
    return np.column_stack([data.times, states * (1 + noise)])


def _check_times(times, where: str) -> None:
    if len(times) < 2:
        raise DataError(f"{where}: expected at least 2 times, got {len(times)}")
    if any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise DataError(f"{where}: times must increase strictly, got {list(times)}")


def read_observations(path: Path) -> np.ndarray:
    """Rows of `t,x1,x2` (a header line first), times strictly increasing, populations > 0."""
    lines = io.read_lines(path)
    header = lines[0].removeprefix("\ufeff")  # a spreadsheet's byte-order mark
    if [c.strip() for c in header.split(",")] != list(COLUMNS):
        raise DataError(f"{path}:1: expected the header t,x1,x2, got {lines[0]!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        try:
            row = [float(f) for f in fields]
        except ValueError:
            row = []
        if len(row) != 3 or not all(math.isfinite(v) for v in row):
            raise DataError(f"{path}:{number}: expected three numbers t,x1,x2, got {line!r}")
        if row[1] <= 0 or row[2] <= 0:
            raise DataError(f"{path}:{number}: populations must be positive, got {line!r}")
        if rows and row[0] <= rows[-1][0]:
            raise DataError(f"{path}:{number}: t must increase, got {row[0]} after {rows[-1][0]}")
        rows.append(row)
    if len(rows) < 2:
        raise DataError(f"{path}: expected at least 2 observations, got {len(rows)}")
    return np.array(rows, dtype=np.float64)


def write_observations(path: Path, rows: np.ndarray) -> None:
    io.write_lines(path, [",".join(COLUMNS)] + [",".join(f"{v:.6f}" for v in row) for row in rows])


def load_observations(data_dir: Path, split: str = "train") -> np.ndarray:
    """(n, 3) rows of t, x1, x2 of one prepared split (train: the start first)."""
    with (data_dir / f"{split}.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    values = [[float(row[c]) for c in COLUMNS] for row in rows]
    return np.array(values, dtype=np.float64).reshape(-1, len(COLUMNS))
