"""The Capsule layer's math on tiny tensors against NumPy and by hand; margin loss by hand;
saving and loading as `.keras`."""

import keras
import numpy as np
import pytest

from kexue.layers.capsule import Capsule, CapsuleLength, MarginLoss, squash


def numpy_squash(s):
    norm2 = np.sum(s**2, axis=-1, keepdims=True) + 1e-7
    return s * np.sqrt(norm2) / (0.5 + norm2)


def numpy_routing(u_hat, routings):
    """u_hat: (batch, outputs j, inputs i, dim); the post's routing written with loops."""
    batch, n_out, n_in, _ = u_hat.shape
    b = np.zeros((batch, n_out, n_in))
    for r in range(routings):
        c = np.exp(b) / np.exp(b).sum(axis=1, keepdims=True)
        v = np.zeros((batch, n_out, u_hat.shape[-1]))
        for j in range(n_out):
            for i in range(n_in):
                v[:, j] += c[:, j, i, None] * u_hat[:, j, i]
        v = numpy_squash(v)
        if r < routings - 1:
            b = np.einsum("bjd,bjid->bji", v, u_hat)
    return v


def test_squash_by_hand():
    # |s| = 5: length 25 / 25.5, direction kept; a zero vector stays zero.
    out = np.asarray(squash(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)))
    np.testing.assert_allclose(out[0], np.array([3.0, 4.0]) / 5 * 25 / 25.5, rtol=1e-5)
    np.testing.assert_allclose(out[1], [0.0, 0.0], atol=1e-6)
    # A short vector shrinks: |s| = 0.1 -> 0.01 / 0.51.
    short = np.linalg.norm(np.asarray(squash(np.array([[0.1, 0.0]], dtype=np.float32))))
    assert short == pytest.approx(0.01 / 0.51, rel=1e-4)


@pytest.mark.parametrize("share_weights", [True, False])
@pytest.mark.parametrize("routings", [1, 3])
def test_routing_matches_numpy(share_weights, routings):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(2, 5, 4)).astype(np.float32)
    layer = Capsule(3, 6, routings=routings, share_weights=share_weights)
    out = np.asarray(layer(inputs))
    kernel = np.asarray(layer.kernel)
    kernel = np.broadcast_to(kernel, (5, *kernel.shape[1:]))
    u_hat = np.einsum("bid,ide->bie", inputs, kernel).reshape(2, 5, 3, 6).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(out, numpy_routing(u_hat, routings), rtol=1e-4, atol=1e-6)
    assert out.shape == (2, 3, 6)


def test_one_routing_round_is_the_squashed_mean_of_predictions():
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(1, 4, 2)).astype(np.float32)
    layer = Capsule(2, 3, routings=1)
    out = np.asarray(layer(inputs))
    u_hat = np.asarray(layer.predictions(inputs))
    # c = softmax(0) over 2 outputs = 1/2 for every input.
    np.testing.assert_allclose(out, numpy_squash(u_hat.sum(axis=2) / 2), rtol=1e-5)


def test_shared_weights_take_any_number_of_input_capsules():
    layer = Capsule(2, 3)
    assert layer(np.ones((1, 4, 2), np.float32)).shape == (1, 2, 3)
    assert layer(np.ones((1, 9, 2), np.float32)).shape == (1, 2, 3)


def test_routings_below_one_are_refused():
    with pytest.raises(ValueError, match="routings must be at least 1"):
        Capsule(2, 3, routings=0)


def test_margin_loss_by_hand():
    lengths = np.array([[0.95, 0.3, 0.05], [0.5, 0.8, 0.2]], dtype=np.float32)
    targets = np.array([[1, 0, 0], [1, 1, 0]], dtype=np.float32)
    loss = MarginLoss(upper=0.9, lower=0.1, down_weight=0.5, reduction=None)
    # Row 1: present 0.95 >= 0.9 -> 0; absent 0.3 -> 0.5 * 0.2^2 = 0.02; absent 0.05 -> 0.
    # Row 2: present 0.5 -> 0.4^2 = 0.16; present 0.8 -> 0.01; absent 0.2 -> 0.5 * 0.01.
    np.testing.assert_allclose(np.asarray(loss(targets, lengths)), [0.02, 0.175], rtol=1e-5)


def test_layers_and_loss_save_and_load(tmp_path):
    images = keras.Input(shape=(6, 4))
    lengths = CapsuleLength()(Capsule(3, 5, routings=2, share_weights=False)(images))
    model = keras.Model(images, lengths)
    model.compile(optimizer="adam", loss=MarginLoss(upper=0.8, lower=0.2, down_weight=0.25))
    model.save(tmp_path / "capsule.keras")
    loaded = keras.models.load_model(tmp_path / "capsule.keras")
    x = np.random.default_rng(2).normal(size=(2, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    assert loaded.layers[1].get_config()["share_weights"] is False
    assert loaded.loss.get_config()["down_weight"] == 0.25
