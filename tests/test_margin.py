"""The AM-Softmax layer and loss against hand and NumPy computations."""

import keras
import numpy as np
import pytest
from keras import ops

from kexue.layers.margin import AMSoftmax, AMSoftmaxLoss


def unit(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


@pytest.fixture
def layer_and_features():
    rng = np.random.default_rng(3)
    layer = AMSoftmax(4)
    layer.build((None, 3))
    layer.class_weights.assign(rng.normal(size=(3, 4)).astype("float32"))
    return layer, rng.normal(size=(5, 3)).astype("float32")


def test_outputs_cosines_of_normalised_features_and_class_weights(layer_and_features):
    layer, features = layer_and_features
    weights = ops.convert_to_numpy(layer.class_weights)
    expected = unit(features, axis=1) @ unit(weights, axis=0)
    cosines = ops.convert_to_numpy(layer(features))
    np.testing.assert_allclose(cosines, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(cosines).max() <= 1.0 + 1e-6


def test_cosines_ignore_the_length_of_features_and_weights(layer_and_features):
    layer, features = layer_and_features
    before = ops.convert_to_numpy(layer(features))
    layer.class_weights.assign(ops.convert_to_numpy(layer.class_weights) * [1.0, 7.0, 0.1, 3.0])
    scaled = ops.convert_to_numpy(layer(features * np.array([[5.0], [0.2], [1], [9], [3]])))
    np.testing.assert_allclose(scaled, before, rtol=1e-5, atol=1e-6)


def test_a_zero_feature_vector_has_zero_cosines(layer_and_features):
    layer, _ = layer_and_features
    assert (ops.convert_to_numpy(layer(np.zeros((1, 3), "float32"))) == 0).all()


def test_loss_by_hand_margin_makes_a_tie():
    # cos = (0.6, 0.4), target 0, s = 10, m = 0.2: logits (10 * (0.6 - 0.2), 10 * 0.4) = (4, 4),
    # so the softmax is (1/2, 1/2) and the loss is log 2. Without the margin: log(1 + e^-2).
    cosines = np.array([[0.6, 0.4]], "float32")
    with_margin = AMSoftmaxLoss(scale=10, margin=0.2, reduction=None)(np.array([0]), cosines)
    without = AMSoftmaxLoss(scale=10, margin=0.0, reduction=None)(np.array([0]), cosines)
    assert float(with_margin[0]) == pytest.approx(np.log(2), rel=1e-5)
    assert float(without[0]) == pytest.approx(np.log1p(np.exp(-2)), rel=1e-5)


def test_loss_matches_numpy_cross_entropy_with_margin_on_the_target_only():
    cosines = np.array([[0.5, 0.2, -0.1], [0.1, 0.9, 0.3], [-0.4, 0.0, 0.8]], "float32")
    labels = np.array([0, 2, 2])
    scale, margin = 30.0, 0.35
    logits = scale * cosines
    logits[np.arange(3), labels] -= scale * margin  # only the target class pays the margin
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(3), labels]
    loss = AMSoftmaxLoss(scale, margin, reduction=None)(labels, cosines)
    np.testing.assert_allclose(ops.convert_to_numpy(loss), expected, rtol=1e-5)
    # The default reduction averages over the batch.
    assert float(AMSoftmaxLoss(scale, margin)(labels, cosines)) == pytest.approx(expected.mean())


def test_training_separates_classes_by_angle():
    keras.utils.set_random_seed(0)
    features = np.eye(4, dtype="float32")[np.arange(64) % 4] + 0.05
    labels = np.arange(64) % 4
    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, AMSoftmax(4)(keras.layers.Dense(8)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=AMSoftmaxLoss(30, 0.35))
    model.fit(features, labels, epochs=40, verbose=0)
    cosines = model.predict(features, verbose=0)
    target = cosines[np.arange(64), labels]
    others = np.where(np.eye(4, dtype=bool)[labels], -np.inf, cosines).max(axis=1)
    assert (target - others > 0.35).all()  # every target wins by more than the margin


def test_saves_and_loads_as_keras_file_with_its_loss(tmp_path, layer_and_features):
    _, features = layer_and_features
    inputs = keras.Input(shape=(3,))
    model = keras.Model(inputs, AMSoftmax(4, name="cosines")(keras.layers.Dense(6)(inputs)))
    model.compile(optimizer="adam", loss=AMSoftmaxLoss(scale=20.0, margin=0.25))
    model.fit(features, np.arange(5) % 4, epochs=1, verbose=0)  # builds the optimizer too
    model.save(tmp_path / "am.keras")
    loaded = keras.models.load_model(tmp_path / "am.keras")
    assert loaded.get_layer("cosines").get_config()["num_classes"] == 4
    assert (loaded.loss.scale, loaded.loss.margin) == (20.0, 0.25)
    np.testing.assert_allclose(
        loaded.predict(features, verbose=0), model.predict(features, verbose=0), rtol=1e-6
    )
