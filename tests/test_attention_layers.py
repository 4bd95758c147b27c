"""The post's attention layers: NumPy references, masks, and .keras save/load."""

import keras
import numpy as np
import pytest

from kexue.layers.attention import MultiHeadAttention, PositionEmbedding

HEADS, SIZE_PER_HEAD, WIDTH = 2, 3, 4


def numpy_attention(x, mask, wq, wk, wv):
    """softmax(Q K^T / sqrt(d)) V per head, padded keys excluded, padded queries zeroed."""
    q, k, v = x @ wq, x @ wk, x @ wv
    batch, length, _ = x.shape
    out = np.zeros((batch, length, HEADS * SIZE_PER_HEAD))
    for b in range(batch):
        for h in range(HEADS):
            cols = slice(h * SIZE_PER_HEAD, (h + 1) * SIZE_PER_HEAD)
            scores = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(SIZE_PER_HEAD)
            scores[:, ~mask[b]] = -np.inf
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[b, :, cols] = weights @ v[b, :, cols]
    return out * mask[:, :, None]


def attention_model() -> keras.Model:
    ids = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(10, WIDTH, mask_zero=True)(ids)
    x = PositionEmbedding(name="position")(x)
    x = MultiHeadAttention(HEADS, SIZE_PER_HEAD, name="attention")(x)
    return keras.Model(ids, x)


def test_position_embedding_matches_the_formula():
    x = np.zeros((1, 5, 6), dtype="float32")
    table = np.asarray(PositionEmbedding()(x))[0]
    for p in range(5):
        for j in range(3):
            angle = p / 10000 ** (2 * j / 6)
            assert table[p, j] == pytest.approx(np.cos(angle), abs=1e-6)
            assert table[p, 3 + j] == pytest.approx(np.sin(angle), abs=1e-6)
    concat = np.asarray(PositionEmbedding(4, mode="concat")(x + 1.0))
    assert concat.shape == (1, 5, 10)
    np.testing.assert_allclose(concat[..., :6], 1.0)
    np.testing.assert_allclose(concat[0, :, 6:], np.asarray(PositionEmbedding()(x[..., :4]))[0])


def test_attention_matches_numpy_with_padding_masked():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, WIDTH)).astype("float32")
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    layer = MultiHeadAttention(HEADS, SIZE_PER_HEAD)
    out = np.asarray(layer(x, mask=mask))
    wq, wk, wv = (np.asarray(w) for w in layer.projections)
    np.testing.assert_allclose(out, numpy_attention(x, mask, wq, wk, wv), atol=1e-5)


def test_padded_keys_get_no_weight_whatever_they_hold():
    model = attention_model()
    ids = np.array([[3, 4, 5, 0, 0]])
    before = np.asarray(model(ids))
    embedding = model.layers[1]
    # Padding id 0 carries another vector now: the real words' outputs must not move.
    weights = embedding.get_weights()[0]
    weights[0] = 100.0
    embedding.set_weights([weights])
    after = np.asarray(model(ids))
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-5)
    np.testing.assert_array_equal(after[:, 3:], 0.0)  # padded queries come out as zeros


def test_an_all_padding_row_stays_finite():
    x = np.ones((1, 3, WIDTH), dtype="float32")
    out = np.asarray(MultiHeadAttention(HEADS, SIZE_PER_HEAD)(x, mask=np.zeros((1, 3), bool)))
    assert np.isfinite(out).all()


def test_layers_save_and_load_as_keras(tmp_path):
    model = attention_model()
    ids = np.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    model.save(tmp_path / "attention.keras")
    loaded = keras.models.load_model(tmp_path / "attention.keras")
    np.testing.assert_allclose(np.asarray(loaded(ids)), np.asarray(model(ids)), atol=1e-6)
    assert loaded.get_layer("attention").get_config()["heads"] == HEADS
