"""bench/training.py's two feeds: the train stage's own model and dataset are caught before
any fitting, and the posts' generator yields the very examples our pipeline does, padded
alike (chars with 0, CRF tags with -1)."""

import importlib.util
import math
import sys

import numpy as np
import pytest
from conftest import REPO, tiny_runtime

from kexue import training
from kexue.models import crf
from kexue.text.vocab import Vocabulary


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # it imports bench/images.py
    spec = importlib.util.spec_from_file_location("bench_training", REPO / "bench/training.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def unpadded_rows(batches) -> list[tuple]:
    """(chars, tags) of each row without its padding; asserts the padding values."""
    rows = []
    for chars, tags in batches:
        chars, tags = np.asarray(chars), np.asarray(tags)
        for row_chars, row_tags in zip(chars, tags, strict=True):
            length = int(np.count_nonzero(row_chars))
            assert (row_chars[length:] == 0).all() and (row_tags[length:] == -1).all()
            assert (row_tags[:length] >= 0).all()
            rows.append((tuple(row_chars[:length]), tuple(row_tags[:length])))
    return sorted(rows)


def test_fit_is_caught_with_the_stages_model_and_dataset(bench, trained_crf, tmp_path):
    config, real_fit = trained_crf["config"], training.fit
    model_dir = tmp_path / "model"
    with pytest.raises(bench.Fitted) as caught, bench.fit_caught(0):
        crf.train(
            config,
            tiny_runtime(tmp_path),
            trained_crf["data"],
            trained_crf["vocab"],
            model_dir,
            tmp_path / "curves.csv",
        )
    assert training.fit is real_fit
    assert not (model_dir / crf.MODEL_FILE).exists()  # nothing was fitted or saved
    fitted = caught.value
    assert fitted.model.name == "cnn_crf_segmenter" and fitted.model.optimizer is not None
    chars, tags = next(iter(fitted.dataset))
    assert chars.shape == tags.shape and chars.shape[0] <= config.train.batch_size


def test_reference_generator_yields_our_examples_padded_alike(bench, trained_crf):
    config, data_dir = trained_crf["config"], trained_crf["data"]
    sentences = crf.read_sentences(data_dir / "train.txt")
    ours = crf.make_dataset(
        sentences, Vocabulary.load(trained_crf["vocab"]), config.train, seed=1, shuffle=True
    )
    batch = config.train.batch_size
    generator = bench.crf_batches(config, data_dir, trained_crf["vocab"], batch, seed=1)()
    one_epoch = [next(generator) for _ in range(math.ceil(len(sentences) / batch))]
    assert all(len(chars) == batch for chars, _ in one_epoch[:-1])
    assert unpadded_rows(one_epoch) == unpadded_rows(ours) != []
