"""The CRF layer against brute-force enumeration of every tag path on tiny inputs."""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from kexue.layers.crf import CRF

NUM_TAGS, MAX_LEN = 3, 5


@pytest.fixture
def crf_and_inputs():
    rng = np.random.default_rng(7)
    crf = CRF(NUM_TAGS)
    crf.build((None, None, NUM_TAGS))
    crf.transitions.assign(rng.normal(size=(NUM_TAGS, NUM_TAGS)).astype("float32"))
    lengths = [5, 3, 1]
    emissions = rng.normal(size=(len(lengths), MAX_LEN, NUM_TAGS)).astype("float32")
    mask = np.array([[t < n for t in range(MAX_LEN)] for n in lengths])
    return crf, emissions, mask, lengths


def all_path_scores(emissions, transitions, length):
    scores = {}
    for path in itertools.product(range(NUM_TAGS), repeat=length):
        score = sum(emissions[t, path[t]] for t in range(length))
        score += sum(transitions[path[t], path[t + 1]] for t in range(length - 1))
        scores[path] = score
    return scores


def test_log_partition_matches_enumeration(crf_and_inputs):
    crf, emissions, mask, lengths = crf_and_inputs
    transitions = ops.convert_to_numpy(crf.transitions)
    log_z = ops.convert_to_numpy(crf.log_partition(emissions, mask))
    for b, length in enumerate(lengths):
        scores = np.array(list(all_path_scores(emissions[b], transitions, length).values()))
        expected = np.log(np.exp(scores).sum())
        assert log_z[b] == pytest.approx(expected, rel=1e-5)


def test_viterbi_finds_best_path_and_pads_with_minus_one(crf_and_inputs):
    crf, emissions, mask, lengths = crf_and_inputs
    transitions = ops.convert_to_numpy(crf.transitions)
    decoded = ops.convert_to_numpy(crf.decode(emissions, mask))
    for b, length in enumerate(lengths):
        scores = all_path_scores(emissions[b], transitions, length)
        best = max(scores, key=scores.get)
        assert tuple(decoded[b, :length]) == best
        assert (decoded[b, length:] == -1).all()


def test_loss_is_log_partition_minus_path_score(crf_and_inputs):
    crf, emissions, mask, lengths = crf_and_inputs
    transitions = ops.convert_to_numpy(crf.transitions)
    tags = np.full(mask.shape, -1)
    expected = []
    for b, length in enumerate(lengths):
        scores = all_path_scores(emissions[b], transitions, length)
        path = tuple(t % NUM_TAGS for t in range(length))
        tags[b, :length] = path
        expected.append(np.log(np.exp(np.array(list(scores.values()))).sum()) - scores[path])
    loss = ops.convert_to_numpy(crf.loss(tags, emissions))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # A probability: the negative log-likelihood is never negative.
    assert (loss >= 0).all()


def test_training_lowers_the_loss_on_a_learnable_pattern():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(None, NUM_TAGS))
    crf = CRF(NUM_TAGS)
    model = keras.Model(inputs, crf(keras.layers.Dense(NUM_TAGS)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=crf.loss)
    tags = np.tile([0, 1, 2, 0, 1], (32, 1))
    features = np.eye(NUM_TAGS, dtype="float32")[tags]
    before = model.evaluate(features, tags, verbose=0)
    model.fit(features, tags, epochs=30, verbose=0)
    assert model.evaluate(features, tags, verbose=0) < before / 4
    decoded = ops.convert_to_numpy(crf.decode(model.predict(features, verbose=0), tags >= 0))
    np.testing.assert_array_equal(decoded, tags)


def test_saves_and_loads_as_keras_file(tmp_path, crf_and_inputs):
    _, emissions, mask, _ = crf_and_inputs
    inputs = keras.Input(shape=(None, NUM_TAGS))
    model = keras.Model(inputs, CRF(NUM_TAGS, name="crf")(keras.layers.Dense(NUM_TAGS)(inputs)))
    model.save(tmp_path / "crf.keras")
    loaded = keras.models.load_model(tmp_path / "crf.keras", compile=False)
    assert loaded.get_layer("crf").get_config()["num_tags"] == NUM_TAGS
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.get_layer("crf").transitions),
        ops.convert_to_numpy(model.get_layer("crf").transitions),
    )
    np.testing.assert_allclose(
        loaded.predict(emissions, verbose=0), model.predict(emissions, verbose=0)
    )


def test_length_one_batches_work_inside_tf_function(crf_and_inputs):
    """A batch of one-character sentences: the scans must not run over zero steps."""
    import tensorflow as tf

    crf, emissions, _, _ = crf_and_inputs
    one_step = emissions[:, :1]
    mask = np.ones(one_step.shape[:2], dtype=bool)
    decode = tf.function(crf.decode, reduce_retracing=True)
    decode(emissions, np.ones(emissions.shape[:2], dtype=bool))  # trace with a longer batch
    np.testing.assert_array_equal(decode(one_step, mask).numpy()[:, 0], one_step[:, 0].argmax(-1))
    log_z = tf.function(crf.log_partition)(one_step, mask).numpy()
    np.testing.assert_allclose(log_z, np.log(np.exp(one_step[:, 0]).sum(-1)), rtol=1e-5)
