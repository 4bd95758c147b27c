"""params.yaml checking: wrong types and unknown keys fail at once, naming the key."""

from dataclasses import dataclass

import pytest

from kexue import params
from kexue.errors import ParamsError
from kexue.models import crf


@dataclass(frozen=True)
class Train:
    epochs: int
    learning_rate: float
    max_sentences: int | None


def test_parse_checks_types_and_converts_ints_to_floats():
    parsed = params.parse(
        Train, {"epochs": 3, "learning_rate": 1, "max_sentences": None}, "crf.train"
    )
    assert parsed == Train(3, 1.0, None)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"epochs": "ten", "learning_rate": 0.1, "max_sentences": None},
            r"crf.train.epochs: expected int, got str 'ten'",
        ),
        (
            {"epochs": True, "learning_rate": 0.1, "max_sentences": None},
            r"crf.train.epochs: expected int, got bool",
        ),
        ({"epochs": 1, "learning_rate": 0.1}, r"crf.train.max_sentences: missing"),
        (
            {"epochs": 1, "learning_rate": 0.1, "max_sentences": 2, "epocs": 3},
            r"crf.train.epocs: unknown key",
        ),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ParamsError, match=message):
        params.parse(Train, values, "crf.train")


def test_full_profile_overrides_only_when_selected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "profile: full\ncrf:\n  train: {epochs: 2, lr: 1}\n  full:\n    train: {epochs: 9}\n"
    )
    loaded = params.load(path)
    assert params.block(loaded, "crf") == {"train": {"epochs": 9, "lr": 1}}
    loaded["profile"] = "default"
    assert params.block(loaded, "crf") == {"train": {"epochs": 2, "lr": 1}}


def test_unknown_profile_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: huge\n")
    with pytest.raises(ParamsError, match=r"profile: expected one of default, full, got 'huge'"):
        params.load(path)


def test_project_params_parse_for_both_profiles():
    loaded = params.load("params.yaml")
    for profile in params.PROFILES:
        loaded["profile"] = profile
        config = params.parse(crf.Config, params.block(loaded, "crf"), "crf")
        assert config.train.epochs > 0


def test_numbers_as_dvc_writes_them_parse(tmp_path):
    """`dvc exp run -S` writes params through DVC's own YAML writer: 1e-5 becomes `1e-05`,
    which PyYAML alone reads as a string; .5 and null must survive too."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text("crf:\n  train: {epochs: 3, learning_rate: 0.001, max_sentences: 9}\n")
    with modify_yaml(path) as data:
        data["crf"]["train"].update(learning_rate=1e-5, max_sentences=None)
    assert "1e-05" in path.read_text()
    loaded = params.load(path)["crf"]["train"]
    assert params.parse(Train, loaded, "crf.train") == Train(3, 1e-5, None)
    path.write_text("a: [1e-5, .5, -2.5E+3, 1e5, 12, '1e-05', 1_000]\n")
    assert params.load(path)["a"] == [1e-5, 0.5, -2500.0, 1e5, 12, "1e-05", 1000]
