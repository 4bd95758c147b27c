"""The registry's champion: the challenger is compared with the champion on the challenger's
own test split, scored by the model's own `evaluate`; a NaN never wins; a champion that
cannot read the split gives way; two exports at once take turns.

The tiny segmenter is logged once; each test registers its versions under a name of its own."""

import functools
import math
import re
import threading
import time

import mlflow
import pytest

from kexue import registry, stats, tracking
from kexue.errors import DataError, IncompatibleDataError
from kexue.models import crf

NAN = math.nan


@pytest.fixture(scope="module")
def logged(trained_crf, tmp_path_factory):
    """The tiny segmenter logged as a pyfunc in a store of this module's (the project folder,
    where the champion's lock lives, too)."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
        patch.chdir(root)
        with tracking.stage_run("crf", "export", {}, data_hash="h"):
            info = registry.export_pyfunc(
                root / "pyfunc",
                crf.pyfunc(trained_crf["config"], trained_crf["vocab"], trained_crf["model_dir"]),
            )
        yield info


@pytest.fixture
def name(request, logged):
    return "kexue-crf-" + re.sub(r"\W", "-", request.node.name)


def register(logged, name: str, score: float, score_champion) -> tuple[str, bool]:
    version, crowned, _ = registry.register_model(
        logged, name, crf.DESCRIPTION, crf.SCORE, score, {}, score_champion
    )
    return version, crowned


def on_split(trained_crf):
    """What the export stage scores a champion with: crf.evaluate on the tiny test split."""
    return functools.partial(
        registry.score_on_split,
        module=crf,
        config=trained_crf["config"],
        data_dir=trained_crf["data"],
    )


def version_tags(name: str, version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(name, version).tags


def champion(name: str) -> str | None:
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def scored(value):
    """A champion scorer that says `value` (or raises it) for any version."""

    def score(model_uri: str) -> float:
        if isinstance(value, Exception):
            raise value
        return value

    return score


@pytest.mark.parametrize(
    ("challenge", "crowned", "said"),
    [
        (registry.Challenge("f1", 0.8), True, "no champion yet"),
        (registry.Challenge("f1", 0.8, "3", 0.7), True, "0.8 is at least champion version 3's 0.7"),
        (registry.Challenge("f1", 0.7, "3", 0.7), True, "f1 0.7 is at least"),
        (registry.Challenge("f1", 0.6, "3", 0.7), False, "f1 0.6 is below"),
        (registry.Challenge("test_rel_sq_error", 0.1, "3", 0.2), True, "is at most"),
        (registry.Challenge("test_rel_sq_error", 0.3, "3", 0.2), False, "is above"),
        (registry.Challenge("f1", NAN), False, "f1 is nan, which never takes the alias"),
        (registry.Challenge("f1", NAN, "3", 0.7), False, "never takes the alias"),
        (registry.Challenge("f1", NAN, "3", NAN), False, "never takes the alias"),
        (registry.Challenge("f1", NAN, "3", unreadable="x"), False, "never takes the alias"),
        (registry.Challenge("f1", 0.0, "3", NAN), True, "champion version 3 scores nan here"),
        (registry.Challenge("test_rel_sq_error", 9.0, "3", NAN), True, "scores nan here"),
        (registry.Challenge("f1", 0.1, "3", unreadable="a class"), True, "cannot read"),
    ],
)
def test_the_verdict_respects_the_direction_and_never_lets_a_nan_win(challenge, crowned, said):
    assert challenge.verdict()[0] is crowned
    assert said in challenge.verdict()[1]


def test_the_champion_is_scored_on_the_new_split_as_the_evaluate_stage_scores(
    trained_crf, logged, name, tmp_path
):
    config, data = trained_crf["config"], trained_crf["data"]
    _, scores = crf.evaluate(
        config, data, trained_crf["vocab"], trained_crf["model_dir"], tmp_path / "plots"
    )
    bootstrap = stats.BootstrapConfig(samples=10, confidence=0.95, seed=0)
    evaluated = stats.comparisons(scores, bootstrap)["f1"]  # what metrics/crf.json says
    assert 0 < evaluated <= 1
    score = on_split(trained_crf)
    assert register(logged, name, 0.1, score) == ("1", True)
    assert version_tags(name, "1") == {
        "f1": "0.1",
        "champion.version": "none",
        "champion.score": "none",
        "champion.reason": "no champion yet",
    }
    # Worse than the champion on this split, though above the champion's own score.
    assert register(logged, name, evaluated - 0.01, score) == ("2", False)
    worse = version_tags(name, "2")
    assert worse["champion.version"] == "1" and worse["champion.score"] == repr(evaluated)
    assert worse["f1"] == str(evaluated - 0.01) and "is below" in worse["champion.reason"]
    assert champion(name) == "1"
    # A tie takes the alias; so does a better one, over the new champion.
    assert register(logged, name, evaluated, score) == ("3", True)
    assert register(logged, name, evaluated + 0.01, score) == ("4", True)
    assert version_tags(name, "4")["champion.version"] == "3" and champion(name) == "4"


def test_a_nan_score_never_takes_the_alias(logged, name):
    assert register(logged, name, NAN, scored(0.5)) == ("1", False)
    assert champion(name) is None  # not even from nobody
    assert register(logged, name, 0.2, scored(0.5)) == ("2", True)
    assert register(logged, name, NAN, scored(NAN)) == ("3", False)
    tags = version_tags(name, "3")
    assert tags["f1"] == "nan" and tags["champion.version"] == "2" and champion(name) == "2"


def test_a_nan_champion_loses_to_any_number(logged, name):
    register(logged, name, 0.9, scored(0.5))
    assert register(logged, name, 0.0, scored(NAN)) == ("2", True)
    tags = version_tags(name, "2")
    assert tags["champion.score"] == "nan" and "scores nan" in tags["champion.reason"]


@pytest.mark.parametrize(
    "unreadable",
    [
        IncompatibleDataError("data/test/beagle: class not in the training split"),
        # A version exported by older code, without a file today's evaluate reads.
        DataError("artifacts/labels.json: file not found"),
    ],
)
def test_a_champion_that_cannot_read_the_new_split_gives_way_and_the_tag_says_why(
    logged, name, unreadable
):
    register(logged, name, 0.9, scored(0.5))
    assert register(logged, name, 0.1, scored(unreadable)) == ("2", True)
    tags = version_tags(name, "2")
    assert tags["champion.version"] == "1" and tags["champion.score"] == "unreadable"
    assert tags["champion.reason"] == (
        f"champion version 1 cannot read this test split: {unreadable}"
    )
    assert champion(name) == "2"


def test_two_exports_at_once_take_turns_the_later_compared_with_the_earlier(logged, name):
    """Both challengers beat version 1; whichever registers first, the other must be
    compared with it, not with version 1 (which both would read at the start)."""

    def slow_recorded_score(model_uri: str) -> float:
        """The champion's recorded score, slowly: both exports are inside at once if they can."""
        time.sleep(0.5)
        return float(version_tags(name, model_uri.rsplit("/", 1)[1])["f1"])

    register(logged, name, 0.5, slow_recorded_score)
    start = threading.Barrier(2)
    results = {}

    def export(score: float) -> None:
        start.wait()
        results[score] = register(logged, name, score, slow_recorded_score)

    threads = [threading.Thread(target=export, args=(score,)) for score in (0.7, 0.6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(version for version, _ in results.values()) == ["2", "3"]
    assert version_tags(name, "2")["champion.version"] == "1"
    assert version_tags(name, "3")["champion.version"] == "2"  # not "1": it waited its turn
    assert champion(name) == results[0.7][0]
