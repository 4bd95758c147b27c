"""The one evaluation protocol: train / validation / test by group, seeded, without overlap;
the early stopper's best epoch."""

import pytest

from kexue import splits
from kexue.errors import DataError

CONFIG = splits.SplitConfig(validation_fraction=0.2, test_fraction=0.2, split_seed=5)


def items(n_groups: int, per_group: int = 3) -> list[tuple[int, str]]:
    return [(g, f"text {g}.{i}") for g in range(n_groups) for i in range(per_group)]


def test_groups_stay_on_one_side_and_every_item_lands_once():
    data = items(20)
    parts = splits.split_groups(data, lambda item: item[0], CONFIG, "corpus.txt")
    groups = {name: {g for g, _ in part} for name, part in parts.items()}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert sorted(sum(parts.values(), [])) == sorted(data)
    assert (len(groups["test"]), len(groups["validation"]), len(groups["train"])) == (4, 4, 12)


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    data = items(30)
    first = splits.split_groups(data, lambda item: item[0], CONFIG, "x")
    assert first == splits.split_groups(data, lambda item: item[0], CONFIG, "x")
    other = splits.SplitConfig(0.2, 0.2, split_seed=6)
    assert first != splits.split_groups(data, lambda item: item[0], other, "x")


def test_too_few_groups_is_a_one_line_error_naming_the_data():
    with pytest.raises(DataError, match="corpus.txt: 2 groups cannot give 1 to test, 1 to"):
        splits.split_groups(items(2), lambda item: item[0], CONFIG, "corpus.txt")


def test_held_out_items_seen_earlier_are_dropped():
    parts = {
        "train": ["a", "b"],
        "validation": ["b", "c", "d"],
        "test": ["a", "c", "e", "e"],
    }
    kept, dropped = splits.drop_overlap(parts, key=str.upper)
    assert kept == {"train": ["a", "b"], "validation": ["c", "d"], "test": ["e", "e"]}
    assert dropped == {"validation_overlap_dropped": 1, "test_overlap_dropped": 2}
    assert splits.overlap(kept["test"], kept["train"] + kept["validation"]) == 0
    assert splits.overlap(parts["test"], parts["train"]) == 1


def test_best_epoch_is_numbered_as_trained_even_after_a_resume():
    """A run resumed after epoch 2 logs epochs 3..5 only; its best is still epoch 4."""
    import keras

    from kexue import training

    history = keras.callbacks.History()
    history.epoch = [2, 3, 4]
    history.history = {"loss": [0.9, 0.8, 0.7], "val_loss": [0.5, 0.4, 0.45]}
    assert training.best_epoch(history) == {
        "best_epoch": 4,
        "best_loss": 0.8,
        "best_val_loss": 0.4,
    }


@pytest.mark.parametrize(
    ("validation", "test", "fewest"), [(0.1, 0.2, 3), (0.2, 0.0, 2), (0.45, 0.45, 9), (0.3, 0.6, 7)]
)
def test_split_groups_accepts_any_number_from_fewest_groups_on(validation, test, fewest):
    config = splits.SplitConfig(validation, test, split_seed=1)
    assert splits.fewest_groups(config) == fewest
    for groups in range(fewest, fewest + 50):
        splits.split_groups(range(groups), int, config, "x")
    with pytest.raises(DataError, match="expected more data"):
        splits.split_groups(range(fewest - 1), int, config, "x")
