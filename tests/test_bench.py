"""bench/training.py: the train stage's own model and dataset are caught before any fitting,
and the FLOPs of a training step are counted through every loop step (loops unrolled)."""

import importlib.util
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, tiny_crf_config, tiny_runtime

from kexue import params, training
from kexue.models import crf


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # it imports bench/flops.py
    spec = importlib.util.spec_from_file_location("bench_training", REPO / "bench/training.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize("reverse", [False, True])
def test_unrolled_scan_is_keras_scan(bench, reverse):
    xs = (np.arange(12, dtype="float32").reshape(4, 3), np.ones((4, 3), "float32"))

    def step(carry, x):
        return carry * 0.5 + x[0] - x[1], carry + x[0]

    init = np.zeros(3, "float32")
    expected = keras.ops.scan(step, init, xs, reverse=reverse)
    unrolled = bench.unrolled_scan(step, init, xs, reverse=reverse)
    for ours, theirs in zip(unrolled, expected, strict=True):
        np.testing.assert_allclose(ours, theirs)


def compiled(*layers) -> keras.Model:
    model = keras.Sequential(layers)
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_a_dense_step_is_its_two_matmuls_and_little_else(bench):
    batch, inputs, units = 16, 8, 4
    model = compiled(keras.Input((inputs,)), keras.layers.Dense(units, use_bias=False))
    step = (tf.zeros((batch, inputs)), tf.zeros((batch, units)))
    matmuls = 2 * (2 * batch * inputs * units)  # forward, and the kernel's gradient
    assert matmuls <= bench.batch_flops(model, step) <= 1.25 * matmuls


def test_an_rnn_is_counted_step_by_step(bench):
    model = compiled(keras.Input((None, 3)), keras.layers.SimpleRNN(4))
    counts = [
        bench.batch_flops(model, (tf.zeros((2, steps, 3)), tf.zeros((2, 4)))) for steps in (3, 6)
    ]
    forward_per_step = 2 * 2 * (3 * 4 + 4 * 4)  # x W + h U, batch 2
    assert counts[1] - counts[0] >= 3 * 2 * forward_per_step  # 3 more steps, each forward+back
    assert not model.get_layer(index=0).unroll  # restored after the count


def test_the_crf_step_is_its_convolutions_counted_by_hand(bench):
    """The project's crf model (params.yaml dims) on one batch: three passes over every
    convolution and the tag layer (forward, the input's gradient, the weights'), and little
    else: the CRF's scan is a few hundred operations a character."""
    config = tiny_crf_config()
    model_config = params.parse(
        crf.Config, params.block(params.load(REPO / "params.yaml"), "crf"), "crf"
    ).model
    model = crf.build_model(vocab_size=500, config=model_config)
    model.compile(optimizer="adam", loss=crf.crf_layer(model).loss)
    batch, length = config.train.batch_size, 30
    chars = tf.ones((batch, length), "int32")
    widths = [model_config.embedding_dim] + [model_config.conv_filters] * model_config.conv_layers
    per_char = sum(
        2 * model_config.kernel_size * inputs * outputs
        for inputs, outputs in zip(widths, widths[1:], strict=False)
    ) + 2 * model_config.conv_filters * len(crf.BMES)
    by_hand = 3 * per_char * batch * length
    counted = bench.batch_flops(model, (chars, tf.zeros((batch, length), "int32")))
    assert by_hand <= counted <= 1.05 * by_hand
