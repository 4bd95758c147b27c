"""RNN as an ODE solver: the cell's steps by hand and against SciPy, saving, the data, a short
fit that recovers the parameters, the pyfunc, the CLI."""

import dataclasses

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_exported_with_example, tiny_runtime

from kexue import cli, params, registry, stats, tracking
from kexue.datasets import ode as ode_data
from kexue.errors import DataError
from kexue.layers.ode import PARAMETERS, CompetitionODECell, competition, solver_step
from kexue.models import ode

TRUTH = {"r1": 0.1, "r2": 0.3, "a1": 1e-4, "a2": 2e-4, "inv_n1": 0.002, "inv_n2": 0.003}


@pytest.fixture(scope="module")
def config():
    return params.parse(ode.Config, params.block(params.load(REPO / "params.yaml"), "ode"), "ode")


def cell_path(method: str, dt: float, n_steps: int, start=(100.0, 150.0)) -> np.ndarray:
    cell = CompetitionODECell(TRUTH, method)
    rnn = keras.layers.RNN(cell, return_sequences=True)
    steps = np.full((1, n_steps, 1), dt, dtype=np.float32)
    return np.asarray(rnn(steps, initial_state=[np.array([start], dtype=np.float32)]))[0]


def test_euler_step_matches_a_hand_computation():
    # dx1 = 0.1*100*(1-0.2) - 1e-4*100*150 = 8 - 1.5 = 6.5
    # dx2 = 0.3*150*(1-0.45) - 2e-4*100*150 = 24.75 - 3 = 21.75
    np.testing.assert_allclose(cell_path("euler", 0.5, 1)[0], [103.25, 160.875], rtol=1e-6)


def test_rk4_step_matches_a_hand_computation():
    x, dt = np.array([[100.0, 150.0]]), 2.0

    def f(x):
        return np.asarray(competition(x, TRUTH))

    k1 = f(x)
    k2 = f(x + dt / 2 * k1)
    k3 = f(x + dt / 2 * k2)
    k4 = f(x + dt * k3)
    by_hand = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    np.testing.assert_allclose(cell_path("rk4", dt, 1)[0], by_hand[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(solver_step(f, x, dt, "rk4")), by_hand, rtol=1e-12)


def test_cell_integrates_like_scipy_and_rk4_converges_faster_than_euler():
    exact = ode.exact_trajectory(TRUTH, [100.0, 150.0], [0.0, 5.0])[-1]
    rk4 = cell_path("rk4", 0.5, 10)[-1]
    np.testing.assert_allclose(rk4, exact, rtol=1e-5)
    # Euler's error halves when the step halves (first order); RK4's is far smaller.
    euler_errors = [
        abs(cell_path("euler", dt, round(5 / dt))[-1] / exact - 1).max() for dt in (0.5, 0.25)
    ]
    assert 1.7 < euler_errors[0] / euler_errors[1] < 2.3
    assert abs(rk4 / exact - 1).max() < euler_errors[1] / 100


def test_cell_saves_and_loads_as_keras(tmp_path):
    model = ode.build_model(ode.ModelConfig(method="euler", step=1.0, initial=TRUTH))
    model.get_layer("solver").cell.log_scales["a1"].assign(np.log(2.0))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert ode.fitted_parameters(loaded)["a1"] == pytest.approx(2e-4, rel=1e-6)
    assert loaded.get_layer("solver").cell.method == "euler"
    inputs = [np.ones((1, 3, 1), np.float32), np.array([[100.0, 150.0]], np.float32)]
    np.testing.assert_allclose(loaded(inputs), model(inputs), rtol=1e-6)


def test_cell_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        CompetitionODECell(TRUTH, "midpoint")


def test_solver_grid_lands_on_every_time():
    steps, positions = ode.solver_grid(np.array([0.0, 2.5, 3.0, 7.0]), 1.0)
    grid = np.concatenate([[0.0], np.cumsum(steps)])
    np.testing.assert_allclose(grid[positions], [0.0, 2.5, 3.0, 7.0])
    assert steps.max() <= 1.0


def test_generated_observations_are_the_posts_table(config, tmp_path):
    counts = ode_data.prepare(config, [], tmp_path)
    assert counts["observations"] == counts["train_times"] == 7  # noise-free: all fitted
    assert counts["validation_times"] == counts["test_times"] == 0
    assert ode.load_observations(tmp_path, "test").shape == (0, 3)
    rows = ode.load_observations(tmp_path)
    # The post's table, rounded: x1 100 165 197 280 305 318 324, x2 150 283 290 276 269 266 264.
    np.testing.assert_allclose(rows[:, 1], [100, 165, 197, 280, 305, 318, 324], atol=0.7)
    np.testing.assert_allclose(rows[:, 2], [150, 283, 290, 276, 269, 266, 264], atol=0.7)


def noisy_config(config):
    """22 noisy times, 0 to 42; 4 held out for validation and 4 for test."""
    data = dataclasses.replace(
        config.data,
        times=list(range(0, 44, 2)),
        noise=0.01,
        validation_fraction=0.2,
        test_fraction=0.2,
    )
    return dataclasses.replace(config, data=data)


def test_held_out_times_are_disjoint_and_the_start_is_always_fitted(config, tmp_path):
    noisy = noisy_config(config)
    counts = ode_data.prepare(noisy, [], tmp_path)
    assert (counts["validation_times"], counts["test_times"]) == (4, 4)
    sides = {
        name: ode.load_observations(tmp_path, name) for name in ("train", "validation", "test")
    }
    times = {name: set(rows[:, 0]) for name, rows in sides.items()}
    assert not times["train"] & times["validation"]
    assert not times["test"] & (times["train"] | times["validation"])
    assert sum(len(t) for t in times.values()) == 22
    assert sides["train"][0, 0] == 0 and list(sides["train"][0, 1:]) == [100, 150]
    assert all(np.all(np.diff(rows[:, 0]) > 0) for rows in sides.values())


def test_validation_batch_weighs_only_the_validation_times():
    fitted = np.array([[0.0, 100, 150], [2.0, 110, 160], [4.0, 120, 170]])
    validation = np.array([[3.0, 115, 165]])
    (steps, start), targets, weights = ode.training_batch(fitted, 1.0, validation)
    np.testing.assert_allclose(steps[0, :, 0], [1, 1, 1, 1])
    np.testing.assert_allclose(start[0], [100, 150])
    np.testing.assert_allclose(weights[0], [0, 0, 1, 0])
    np.testing.assert_allclose(targets[0, 2], [115, 165])


def test_r2_from_item_totals_is_r2():
    rng = np.random.default_rng(0)
    observed = rng.uniform(100, 300, size=(30, 2))
    predicted = observed + rng.normal(0, 5, size=observed.shape)
    items = ode.r2_items(observed, predicted)
    assert stats.figure(items, ode.r2_from_totals) == pytest.approx(ode.r2(observed, predicted))


def from_file(config):
    """`config` reading its observations from the CSV the pipeline passes."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, source="file"))


POST_TABLE = REPO / "data" / "examples" / "ode_post_table.csv"


def test_generated_observations_ignore_the_csv_the_pipeline_passes(config, tmp_path):
    ode_data.prepare(config, [POST_TABLE], tmp_path / "generated")
    ode_data.prepare(config, [], tmp_path / "alone")
    for name in ("train.csv", "truth.json"):
        assert (tmp_path / "generated" / name).read_text() == (
            tmp_path / "alone" / name
        ).read_text()


def test_observations_from_a_csv_replace_the_generated_ones(config, tmp_path):
    # The post's table as printed: the default data's observations, rounded.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ode.TRUTH).write_text("{}")  # left over from a generated run
    counts = ode_data.prepare(from_file(config), [POST_TABLE], tmp_path / "out")
    assert counts == {
        "observations": 7, "generated": 0, "train_times": 7, "validation_times": 0,
        "test_times": 0,
    }  # fmt: skip
    rows = ode.load_observations(tmp_path / "out")
    assert rows[:, 1].tolist() == [100, 165, 197, 280, 305, 318, 324]
    assert rows[:, 2].tolist() == [150, 283, 290, 276, 269, 266, 264]
    # No truth to judge the fit against: the generated run's is gone.
    assert not (tmp_path / "out" / ode.TRUTH).exists()


def test_a_csv_is_required_when_the_source_is_a_file(config, tmp_path):
    with pytest.raises(DataError, match="ode.data.source is file: expected one observations CSV"):
        ode_data.prepare(from_file(config), [], tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t,x1,x2\n0,1,2\n1,1\n", r"obs\.csv:3: expected three numbers t,x1,x2, got '1,1'"),
        ("t,x1,x2\n0,1,2\n1,a,2\n", r"obs\.csv:3: expected three numbers t,x1,x2, got '1,a,2'"),
        ("t,x1,x2\n0,1,2\n2,1,2\n1,1,2\n", r"obs\.csv:4: t must increase, got 1.0 after 2.0"),
        ("t,x1,x2\n0,1,2\n2,1,2\n2,1,2\n", r"obs\.csv:4: t must increase, got 2.0 after 2.0"),
        ("t,y\n0,1\n", r"obs\.csv:1: expected the header t,x1,x2"),
        ("t,x1\n0,1\n", r"obs\.csv:1: expected the header t,x1,x2"),
        ("t,x1,x2\n0,1,2\n1,0,2\n", r"obs\.csv:3: populations must be positive"),
        ("t,x1,x2\n0,1,2\n", r"obs\.csv: expected at least 2 observations, got 1"),
    ],
)
def test_bad_observation_csv_names_the_file_and_line(config, tmp_path, text, message):
    source = tmp_path / "obs.csv"
    source.write_text(text)
    with pytest.raises(DataError, match=message):
        ode_data.prepare(from_file(config), [source], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_fit_to_csv_observations_is_judged_on_its_held_out_times(config, tmp_path):
    short = dataclasses.replace(
        from_file(config),
        train=dataclasses.replace(config.train, epochs=1, steps_per_epoch=20, patience=None),
    )
    ode_data.prepare(short, [POST_TABLE], tmp_path / "data")
    summary = ode.train(
        short, tiny_runtime(tmp_path), tmp_path / "data", None, tmp_path / "model",
        tmp_path / "curves.csv",
    )  # fmt: skip
    assert summary["fitted_times"] == 6 and (tmp_path / "model" / ode.MODEL_FILE).is_file()
    # No truth and no held-out times: nothing to judge the fit on.
    with pytest.raises(DataError, match=r"holds 0; expected at least 2: set ode.data.test_f"):
        ode.evaluate(short, tmp_path / "data", None, tmp_path / "model", tmp_path / "plots")

    held_out = dataclasses.replace(short, data=dataclasses.replace(short.data, test_fraction=0.34))
    ode_data.prepare(held_out, [POST_TABLE], tmp_path / "held_out")
    ode.train(
        held_out, tiny_runtime(tmp_path), tmp_path / "held_out", None, tmp_path / "model2",
        tmp_path / "curves2.csv",
    )  # fmt: skip
    metrics, scores = ode.evaluate(
        held_out, tmp_path / "held_out", None, tmp_path / "model2", tmp_path / "plots"
    )
    by_name = {score.metric: score for score in scores}
    assert metrics["test_times"] == 2 and "max_param_error" not in metrics
    assert set(by_name) == {ode.SCORE, "test_rel_sq_error"}
    assert len(by_name[ode.SCORE].model) == 2 and "scipy" in by_name[ode.SCORE].baselines


@pytest.fixture(scope="module")
def fitted(config, tmp_path_factory):
    """A short fit from the default guesses (a few seconds)."""
    root = tmp_path_factory.mktemp("ode")
    short = dataclasses.replace(
        config,
        train=dataclasses.replace(
            config.train, epochs=4, steps_per_epoch=100, learning_rate=0.1, patience=None
        ),
    )
    ode_data.prepare(short, [], root / "data")
    summary = ode.train(
        short, tiny_runtime(root), root / "data", None, root / "model", root / "curves.csv"
    )
    return {"config": short, "root": root, "summary": summary}


def test_short_fit_follows_the_observations(fitted):
    # Four epochs do not pin down all six parameters (a1 and 1/N1 trade off, see docs/models.md);
    # they do bring the solved trajectory onto the observations.
    root, config = fitted["root"], fitted["config"]
    curves = pd.read_csv(root / "curves.csv")
    assert curves["loss"].iloc[-1] < curves["loss"].iloc[0] / 20
    observed = ode.load_observations(root / "data")
    solved = ode.Trajectory.load(root / "model" / ode.MODEL_FILE, config.model.step).at(
        observed[0, 0], observed[0, 1:], observed[1:, 0]
    )
    np.testing.assert_allclose(solved, observed[1:, 1:], rtol=0.05)


def test_evaluate_judges_the_fit_and_scipy_on_what_they_were_not_fitted_to(fitted):
    root, config = fitted["root"], fitted["config"]
    metrics, scores = ode.evaluate(config, root / "data", None, root / "model", root / "plots")
    assert metrics["test_overlap"] == 0 and metrics["test_times"] == 0
    assert metrics["fitted_r2"] > 0.98
    # SciPy's fit of noise-free data recovers the truth.
    assert metrics["max_param_error_scipy"] < 1e-3
    assert metrics["max_param_error"] == max(metrics[f"param_error_{n}"] for n in PARAMETERS)
    assert [s.metric for s in scores] == [ode.SCORE, "extrapolation_rel_sq_error"]
    # The horizon's points past t = 42: (80 - 42) / 0.5.
    assert metrics["extrapolation_points"] == 76 == len(scores[0].model)
    figures = stats.comparisons(scores, stats.BootstrapConfig(200, 0.95, 0))
    # Four epochs follow the 7 observations (fitted R² above) yet miss the future: the
    # reason SCORE is not the fitted R². SciPy's converged fit extrapolates nearly exactly.
    assert (
        figures[ode.SCORE] < figures[f"{ode.SCORE}_scipy"]
        and figures[f"{ode.SCORE}_scipy"] > 0.9999
    )
    assert figures[f"{ode.SCORE}_vs_scipy_low"] <= figures[f"{ode.SCORE}_vs_scipy"] <= 0
    curve = pd.read_csv(root / "plots" / "trajectory.csv")
    assert list(curve.columns) == [
        "t",
        *(f"{s}_{x}" for s in ("fit", "scipy", "true") for x in ("x1", "x2")),
    ]
    assert curve["t"].iloc[-1] == config.evaluate.horizon
    observed = pd.read_csv(root / "plots" / "observed.csv")
    assert len(observed) == 7 and set(observed["split"]) == {"train"}


def test_evaluate_scores_held_out_times_and_early_stops_on_validation(config, tmp_path):
    noisy = dataclasses.replace(
        noisy_config(config),
        train=dataclasses.replace(
            config.train, epochs=3, steps_per_epoch=50, learning_rate=0.1, patience=1
        ),
    )
    ode_data.prepare(noisy, [], tmp_path / "data")
    summary = ode.train(
        noisy, tiny_runtime(tmp_path), tmp_path / "data", None, tmp_path / "model",
        tmp_path / "curves.csv",
    )  # fmt: skip
    assert summary["validation_times"] == 4 and 1 <= summary["best_epoch"] <= 3
    assert "val_loss" in pd.read_csv(tmp_path / "curves.csv").columns
    metrics, scores = ode.evaluate(
        noisy, tmp_path / "data", None, tmp_path / "model", tmp_path / "plots"
    )
    assert metrics["test_times"] == 4 and metrics["test_overlap"] == 0
    held_out = next(s for s in scores if s.metric == "test_rel_sq_error")
    assert len(held_out.model) == len(held_out.baselines["scipy"]) == 4


@pytest.fixture(scope="module")
def pyfunc_dir(fitted, tmp_path_factory):
    root = fitted["root"]
    store = tmp_path_factory.mktemp("store")
    out = store / "pyfunc"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlruns.db'}")
        with tracking.stage_run("ode", "export", {}, data_hash="h"):
            registry.export_pyfunc(out, ode.pyfunc(fitted["config"], None, root / "model"))
    return out


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(pyfunc_dir):
    assert_exported_with_example(pyfunc_dir)


def test_pyfunc_answers_times_and_a_new_start(pyfunc_dir, fitted):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    observed = ode.load_observations(fitted["root"] / "data")
    out = model.predict(pd.DataFrame({"t": observed[:, 0]}))
    assert list(out.columns) == ["t", "x1", "x2"]
    np.testing.assert_allclose(out[["x1", "x2"]].to_numpy()[0], [100, 150])
    np.testing.assert_allclose(out[["x1", "x2"]].to_numpy(), observed[:, 1:], rtol=0.05)
    moved = model.predict(pd.DataFrame({"t": [0.0, 10.0]}), params={"x1": 50.0, "x2": 150.0})
    assert moved["x1"].iloc[0] == 50 and moved["x1"].iloc[1] < out["x1"].iloc[1]


@pytest.mark.parametrize(
    ("frame", "request_params", "message"),
    [
        (pd.DataFrame({"time": [1.0]}), None, r"missing inputs \['t'\]"),
        (pd.DataFrame({"t": [5.0, 1.0]}), None, "row 1: times must be ascending"),
        (pd.DataFrame({"t": [-1.0]}), None, "row 0: 't' must be between 0"),
        (pd.DataFrame({"t": [1.0]}), {"x1": -3.0}, "x1 must be a positive number"),
        (pd.DataFrame({"t": ["soon"]}), None, "'t'"),
    ],
)
def test_pyfunc_bad_request_is_a_clear_error(pyfunc_dir, frame, request_params, message):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(frame, params=request_params)


def test_cli_prints_populations_at_the_times(pyfunc_dir, capsys):
    assert cli.main(["ode", "--model", str(pyfunc_dir), "0", "10", "--x1", "120"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "t\tx1\tx2"
    assert lines[1].split("\t") == ["0", "120.0000", "150.0000"]
    assert len(lines) == 3


def test_cli_refuses_a_time_that_is_not_a_number(pyfunc_dir, capsys):
    assert cli.main(["ode", "--model", str(pyfunc_dir), "ten"]) == 1
    assert "a time must be a number, got 'ten'" in capsys.readouterr().err


def test_the_xla_fit_finds_the_plain_graphs_parameters(fitted, tmp_path):
    config, root = fitted["config"], fitted["root"]
    assert config.train.jit_compile  # the fixture's fit ran compiled
    plain = dataclasses.replace(config, train=dataclasses.replace(config.train, jit_compile=False))
    summary = ode.train(
        plain, tiny_runtime(tmp_path), root / "data", None, tmp_path / "model", tmp_path / "c.csv"
    )
    for name in PARAMETERS:
        key = f"fit_{name}"
        assert summary[key] == pytest.approx(fitted["summary"][key], rel=1e-4), key


def test_xla_only_on_one_replica(config):
    replicas = [ode.use_xla(config.train, FakeStrategy(n)) for n in (1, 2)]
    assert replicas == [True, False]


@dataclasses.dataclass
class FakeStrategy:
    num_replicas_in_sync: int
