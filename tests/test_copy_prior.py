"""The copy prior layer: its math against NumPy, save/load as .keras, bad shapes."""

import keras
import numpy as np
import pytest

from kexue.layers.copy_prior import CopyPrior

VOCAB = 7


def prior_layer(seed: int = 0) -> CopyPrior:
    layer = CopyPrior(VOCAB)
    layer.build(((None, None, VOCAB), (None, None)))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=VOCAB), rng.normal(size=VOCAB)])
    return layer


def expected(layer: CopyPrior, logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    log_scale, shift = (np.asarray(w) for w in layer.get_weights())
    present = np.zeros((len(ids), VOCAB))
    for row, row_ids in enumerate(ids):
        present[row, [i for i in row_ids if i != 0]] = 1.0  # once per token, never padding
    prior = np.exp(log_scale) * present + shift
    if logits.ndim == 3:
        prior = prior[:, None, :]
    return (logits + prior) / 2


@pytest.mark.parametrize("positions", [None, 3])
def test_prior_matches_numpy(positions):
    layer = prior_layer()
    ids = np.array([[3, 3, 5, 0, 0], [1, 6, 2, 4, 0]], dtype="int32")
    shape = (2, VOCAB) if positions is None else (2, positions, VOCAB)
    logits = np.random.default_rng(1).normal(size=shape).astype("float32")
    out = keras.ops.convert_to_numpy(layer([logits, ids]))
    np.testing.assert_allclose(out, expected(layer, logits, ids), rtol=1e-5, atol=1e-6)


def test_fresh_layer_adds_one_to_present_tokens():
    layer = CopyPrior(VOCAB)
    out = keras.ops.convert_to_numpy(layer([np.zeros((1, VOCAB), "float32"), np.array([[2, 0]])]))
    np.testing.assert_allclose(out, [[0, 0, 0.5, 0, 0, 0, 0]])


def test_saves_and_loads_as_keras_file(tmp_path):
    logits = keras.Input((None, VOCAB))
    ids = keras.Input((None,), dtype="int32")
    model = keras.Model([logits, ids], CopyPrior(VOCAB, name="copy")([logits, ids]))
    rng = np.random.default_rng(2)
    model.get_layer("copy").set_weights([rng.normal(size=VOCAB), rng.normal(size=VOCAB)])
    x = [rng.normal(size=(2, 3, VOCAB)).astype("float32"), np.array([[1, 4, 0], [6, 6, 6]])]
    model.save(tmp_path / "prior.keras")
    loaded = keras.models.load_model(tmp_path / "prior.keras")
    assert isinstance(loaded.get_layer("copy"), CopyPrior)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_wrong_logit_width_is_refused():
    with pytest.raises(ValueError, match="expects 7 logits per position, got 5"):
        CopyPrior(VOCAB)([np.zeros((1, 5), "float32"), np.array([[1]])])
