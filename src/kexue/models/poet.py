"""Random couplets from a CNN + VAE, after "基于CNN和VAE的作诗机器人：随机成诗" (kexue.fm, 2018).

A couplet is two lines of five characters (pentasyllabic), 10 character ids. The post's model:

    encoder  ids -> embedding -> 2 x gated conv (residual) -> average over positions
                 -> mean, log_var of a Gaussian code z (layers/gaussian_latent.py)
    decoder  z -> dense -> (10, hidden) -> gated conv (residual) -> a character per position

trained on the summed cross-entropy of the 10 characters plus the KL divergence of the code
from N(0, I). A new couplet is a z drawn from N(0, I), decoded. The decoder scores every
position at once from z alone (no position sees another's choice), so z carries the couplet.

Decoding with a temperature T: position i's character is drawn from p_i^(1/T) (normalised),
p_i the decoder's softmax. T = 1 samples the model as trained; T -> 0 tends to the post's
argmax (every position's most likely character); T > 1 flattens toward uniform. The padding
and unknown ids are never drawn. Here the decoder ends in logits (the softmax is inside the
loss), which is the same model and makes the temperature a division.

Data: the Tang poems of chinese-poetry (traditional characters, as in the corpus); every
sentence of a poem that is two five-character lines is a couplet. The split into train,
validation and test is by poem (seeded, kexue.splits), and a held-out couplet that also
occurs on an earlier side (a validation couplet in a training poem, a test couplet in a
training or validation poem) is dropped.

Training stops early on the validation loss, the summed cross-entropy plus the KL at its
full weight (the warm-up ramps the weight for training only), so epochs compare alike.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops

from kexue import io, serving, splits, stats, training
from kexue.datasets.poet import (
    HAN,
    Config,
    ModelConfig,
    encode,
    normalised,
    read_couplets,
)
from kexue.errors import DataError, IncompatibleDataError
from kexue.layers.gated_conv import GatedConv1D
from kexue.layers.gaussian_latent import GaussianSample, KLDivergence, KLWarmup, WeightedOutput
from kexue.text.vocab import Vocabulary

MODEL_FILE = "model.keras"
SCORE = "recon_acc"  # the champion reconstructs held-out couplets best from their codes
DESCRIPTION = (
    "Random couplets from a gated-CNN VAE (kexue.fm, 基于CNN和VAE的作诗机器人：随机成诗), "
    "Tang poems, traditional characters. Input: a column `count` (poems per row), optional "
    "`temperature` (> 0; 1 samples the model, toward 0 the most likely characters) and "
    "`seed`. Output: a column `poems`, a list of couplets per row."
)
PAD_ID, UNK_ID = 0, 1
NEVER_DRAWN = [PAD_ID, UNK_ID]
SEED_LIMIT = 2**32  # numpy seeds are 0 .. 2**32 - 1


# -- model --------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kexue")
def summed_crossentropy(y_true, y_pred):
    """Cross-entropy summed over the couplet's positions (the post's), per couplet."""
    per_char = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    return ops.sum(per_char, axis=-1)


def unweighted(y_true, y_pred):
    """The KL output as it is (the logged loss is weighted during the warm-up)."""
    return y_pred


def build_encoder(vocab_size: int, couplet_chars: int, config: ModelConfig) -> keras.Model:
    ids = keras.Input(shape=(couplet_chars,), dtype="int32", name="couplet_ids")
    hidden = keras.layers.Embedding(vocab_size, config.hidden_dim, name="char_embedding")(ids)
    for i in range(config.encoder_layers):
        hidden = GatedConv1D(
            kernel_size=config.kernel_size, residual=True, name=f"encoder_gcnn_{i + 1}"
        )(hidden)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    mean = keras.layers.Dense(config.latent_dim, name="z_mean")(pooled)
    log_var = keras.layers.Dense(
        config.latent_dim,
        bias_initializer=keras.initializers.Constant(config.initial_log_var),
        name="z_log_var",
    )(pooled)
    return keras.Model(ids, [mean, log_var], name="encoder")


def build_decoder(vocab_size: int, couplet_chars: int, config: ModelConfig) -> keras.Model:
    code = keras.Input(shape=(config.latent_dim,), name="z")
    hidden = keras.layers.Dense(config.hidden_dim * couplet_chars, name="spread")(code)
    hidden = keras.layers.Reshape((couplet_chars, config.hidden_dim))(hidden)
    for i in range(config.decoder_layers):
        hidden = GatedConv1D(
            kernel_size=config.kernel_size, residual=True, name=f"decoder_gcnn_{i + 1}"
        )(hidden)
    # Logits in float32: they feed a softmax (mixed precision on a GPU).
    logits = keras.layers.Dense(vocab_size, dtype="float32", name="char_logits")(hidden)
    return keras.Model(code, logits, name="decoder")


def build_model(vocab_size: int, couplet_chars: int, config: ModelConfig, seed: int):
    """Couplet ids -> {"couplet": logits of each position's character, "kl": KL per row}."""
    ids = keras.Input(shape=(couplet_chars,), dtype="int32", name="couplet_ids")
    mean, log_var = build_encoder(vocab_size, couplet_chars, config)(ids)
    code = GaussianSample(seed, name="z_sample")([mean, log_var])
    logits = build_decoder(vocab_size, couplet_chars, config)(code)
    kl = KLDivergence(dtype="float32", name="kl")([mean, log_var])
    return keras.Model(ids, {"couplet": logits, "kl": kl}, name="poet_vae")


def make_dataset(ids: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    """(ids, {"couplet": ids, "kl": 0}): the couplet is its own target; the KL's is unused."""
    targets = {"couplet": ids, "kl": np.zeros(len(ids), dtype=np.float32)}
    dataset = tf.data.Dataset.from_tensor_slices((ids, targets))
    if shuffle:
        dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train(
    config: Config,
    runtime: training.RuntimeConfig,
    data_dir: Path,
    vocab_file: Path,
    model_dir: Path,
    curves_file: Path,
) -> dict[str, float]:
    """Fit on the training couplets, stop early on the validation couplets' loss; the
    validation figures that chose, and the prior samples' figures the serving
    temperature is read on."""
    strategy = training.setup(runtime)
    vocab = Vocabulary.load(vocab_file)
    line_chars = config.data.line_chars
    couplets = read_couplets(data_dir / "train.txt", line_chars)
    random.Random(runtime.seed).shuffle(couplets)
    if config.train.max_couplets is not None:
        couplets = couplets[: config.train.max_couplets]
    validation = read_couplets(data_dir / "validation.txt", line_chars)
    batch = training.global_batch_size(config.train.batch_size, strategy)
    kl_loss = WeightedOutput(config.train.kl_weight)
    with strategy.scope():
        model = build_model(len(vocab), 2 * config.data.line_chars, config.model, runtime.seed)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate),
            loss={"couplet": summed_crossentropy, "kl": kl_loss},
            metrics={
                "couplet": [keras.metrics.SparseCategoricalAccuracy(name="char_accuracy")],
                "kl": [keras.metrics.MeanMetricWrapper(unweighted, name="nats")],
            },
        )
    warmup = KLWarmup(kl_loss, config.train.kl_weight, config.train.kl_warmup_couplets // batch)
    history = training.fit(
        model,
        make_dataset(encode(couplets, vocab), batch, runtime.seed, shuffle=True),
        make_dataset(encode(validation, vocab), batch, runtime.seed, shuffle=False),
        epochs=config.train.epochs,
        curves_path=curves_file,
        backup_dir=Path(runtime.backup_dir),
        extra_callbacks=[warmup],
        patience=config.train.patience,
    )
    training.save_model(model, model_dir / MODEL_FILE)
    sampler = CoupletSampler(model, vocab, config.serve.batch_size)
    train_lines = lines_of(read_couplets(data_dir / "train.txt", line_chars), line_chars)
    return {
        "train_couplets": len(couplets),
        "validation_couplets": len(validation),
        "epochs_run": len(history.history["loss"]),
        **training.best_epoch(history),
        **validation_reconstruction(sampler, validation),
        **prior_sample_figures(sampler, train_lines, config),
    }


def validation_reconstruction(sampler: CoupletSampler, validation: list[str]) -> dict:
    """Validation reconstruction accuracy from the couplets' codes and from the prior's mean."""
    codes = sampler.codes(validation)
    return {
        "validation_recon_acc": float(np.mean(reconstruction_accuracy(sampler, validation, codes))),
        "validation_recon_acc_prior_mean": float(
            np.mean(reconstruction_accuracy(sampler, validation, np.zeros_like(codes)))
        ),
    }


def prior_sample_figures(sampler: CoupletSampler, train_lines: set[str], config: Config) -> dict:
    """Well-formed, novel-line and distinct-2 figures of `evaluate.samples` codes from the
    prior at argmax and at every temperature of the sweep and the serving one: what the
    serving temperature is read on (no held-out data involved)."""
    rows = temperature_sweep(sampler, train_lines, config)[0]
    keys = ("well_formed", "novel_lines", "distinct_2")
    return {f"samples_t{row['temperature']:g}_{key}": row[key] for row in rows for key in keys}


def temperature_sweep(sampler: CoupletSampler, train_lines: set[str], config: Config):
    """([{"temperature", figures...}] for argmax (temperature 0) and each temperature,
    {temperature: couplets}, argmax couplets): one set of prior codes for every setting."""
    line_chars, evaluation = config.data.line_chars, config.evaluate
    rng = np.random.default_rng(evaluation.seed)
    codes = sampler.prior_codes(evaluation.samples, rng)
    temperatures = sorted({*evaluation.temperatures, config.serve.temperature})
    sampled = {t: sampler.text(sampler.draw(codes, t, rng)) for t in temperatures}
    greedy = sampler.text(sampler.draw(codes, None, rng))
    rows = [{"temperature": 0.0, **sample_quality(greedy, train_lines, line_chars)}] + [
        {"temperature": t, **sample_quality(sampled[t], train_lines, line_chars)}
        for t in temperatures
    ]
    return rows, sampled, greedy, rng


def lines_of(couplets: list[str], line_chars: int) -> set[str]:
    return {c[i : i + line_chars] for c in couplets for i in (0, line_chars)}


# -- sampling -----------------------------------------------------------------------------


def choose(logits: np.ndarray, temperature: float | None, rng: np.random.Generator) -> np.ndarray:
    """A character id per position from (..., vocab) logits: argmax when `temperature` is
    None, else a draw from softmax(logits / temperature) (the Gumbel-max trick: the argmax of
    logits / T plus Gumbel noise is such a draw). Padding and unknown are never chosen."""
    logits = np.array(logits, dtype=np.float64)
    logits[..., NEVER_DRAWN] = -np.inf
    if temperature is None:
        return np.argmax(logits, axis=-1)
    return np.argmax(logits / temperature + rng.gumbel(size=logits.shape), axis=-1)


class CoupletSampler:
    """The trained VAE's two halves: couplets -> codes, codes -> couplets."""

    def __init__(self, model: keras.Model, vocab: Vocabulary, batch_size: int):
        self.vocab, self.batch_size = vocab, batch_size
        encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
        self.couplet_chars = encoder.input_shape[1]
        self.latent_dim = decoder.input_shape[-1]
        if len(vocab) != decoder.output_shape[-1]:
            raise DataError(
                f"the vocabulary has {len(vocab)} tokens; the model was trained with "
                f"{decoder.output_shape[-1]}"
            )
        # One trace per batch shape, not per call.
        self._encode = tf.function(
            lambda ids: encoder(ids, training=False)[0], reduce_retracing=True
        )
        self._decode = tf.function(
            lambda codes: decoder(codes, training=False), reduce_retracing=True
        )

    @classmethod
    def load(cls, model_file: Path | str, vocab_file: Path | str, batch_size: int):
        model = keras.models.load_model(model_file, compile=False)
        return cls(model, Vocabulary.load(vocab_file), batch_size)

    def codes(self, couplets: list[str]) -> np.ndarray:
        """The encoder's mean code of each couplet."""
        ids = encode(couplets, self.vocab)
        parts = [
            self._encode(tf.constant(ids[i : i + self.batch_size])).numpy()
            for i in range(0, len(ids), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.latent_dim))

    def draw(self, codes: np.ndarray, temperature: float | None, rng) -> np.ndarray:
        """(n, couplet_chars) ids decoded from codes, `batch_size` codes at a time (the
        logits of a thousand codes would take gigabytes)."""
        codes = np.asarray(codes, dtype=np.float32)
        chosen = [
            choose(
                self._decode(tf.constant(codes[i : i + self.batch_size])).numpy(), temperature, rng
            )
            for i in range(0, len(codes), self.batch_size)
        ]
        return np.concatenate(chosen) if chosen else np.zeros((0, self.couplet_chars), np.int64)

    def prior_codes(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((count, self.latent_dim))

    def sample(self, count: int, temperature: float | None, rng) -> list[str]:
        """`count` new couplets: codes from the prior N(0, I), decoded at `temperature`."""
        return self.text(self.draw(self.prior_codes(count, rng), temperature, rng))

    def text(self, ids: np.ndarray) -> list[str]:
        return ["".join(self.vocab.tokens[i] for i in row) for row in ids]


def punctuated(couplet: str) -> str:
    """ "秦川雄帝宅函谷壯皇居" -> "秦川雄帝宅，函谷壯皇居。" (as the corpus writes it)."""
    half = len(couplet) // 2
    return f"{couplet[:half]}，{couplet[half:]}。"


# -- evaluation ---------------------------------------------------------------------------


def is_well_formed(couplet: str, line_chars: int) -> bool:
    """Two lines of `line_chars` Han characters: no padding, no unknown token, nothing else."""
    return re.fullmatch(f"{HAN}{{{2 * line_chars}}}", couplet) is not None


def sample_quality(couplets: list[str], train_lines: set[str], line_chars: int) -> dict:
    """Well-formed share; share of lines (and of couplets) not in the training corpus;
    distinct-2: distinct character bigrams within lines over all of them."""
    lines = [c[i : i + line_chars] for c in couplets for i in (0, line_chars)]
    bigrams = [line[i : i + 2] for line in lines for i in range(len(line) - 1)]
    return {
        "well_formed": float(np.mean([is_well_formed(c, line_chars) for c in couplets])),
        "novel_lines": float(np.mean([line not in train_lines for line in lines])),
        "novel_couplets": float(
            np.mean(
                [
                    any(c[i : i + line_chars] not in train_lines for i in (0, line_chars))
                    for c in couplets
                ]
            )
        ),  # fmt: skip
        "distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
    }


def reconstruction_accuracy(sampler: CoupletSampler, couplets: list[str], codes) -> np.ndarray:
    """Per couplet, the share of its characters the argmax decoding of `codes` gets right,
    position by position."""
    decoded = sampler.draw(codes, None, None)
    return np.mean(decoded == encode(couplets, sampler.vocab), axis=1)


def interpolation(sampler: CoupletSampler, start: str, end: str, steps: int) -> list[str]:
    """Argmax decodings along the straight line between two couplets' codes."""
    a, b = sampler.codes([start, end])
    weights = np.linspace(0.0, 1.0, steps)[:, None]
    return sampler.text(sampler.draw((1 - weights) * a + weights * b, None, None))


def evaluate(
    config: Config, data_dir: Path, vocab_file: Path, model_dir: Path, plots_dir: Path
) -> tuple[dict[str, float], list[stats.Scores]]:
    """Per held-out couplet, the reconstruction accuracy from its code (SCORE) and from the
    prior's mean (the floor: what the decoder gives any couplet); on `evaluate.samples`
    codes from the prior: well-formed, novel and distinct-2 at the serving temperature, at
    argmax and over a temperature sweep; samples and an interpolation as text."""
    line_chars = config.data.line_chars
    sampler = CoupletSampler.load(model_dir / MODEL_FILE, vocab_file, config.serve.batch_size)
    if sampler.couplet_chars != 2 * line_chars:
        raise IncompatibleDataError(
            f"{MODEL_FILE} reads couplets of {sampler.couplet_chars} characters; "
            f"params.yaml: poet.data.line_chars {line_chars} makes them {2 * line_chars}"
        )
    train_couplets = read_couplets(data_dir / "train.txt", line_chars)
    validation = read_couplets(data_dir / "validation.txt", line_chars)
    test = read_couplets(data_dir / "test.txt", line_chars)
    rows, sampled, greedy, rng = temperature_sweep(
        sampler, lines_of(train_couplets, line_chars), config
    )
    served = next(row for row in rows[1:] if row["temperature"] == config.serve.temperature)
    test_codes = sampler.codes(test)
    reconstruction = stats.Scores(
        SCORE,
        reconstruction_accuracy(sampler, test, test_codes),
        {"prior_mean": reconstruction_accuracy(sampler, test, np.zeros_like(test_codes))},
    )
    metrics = {
        **{k: v for k, v in served.items() if k != "temperature"},
        **{f"argmax_{k}": v for k, v in rows[0].items() if k != "temperature"},
        "test_code_norm": float(np.mean(np.linalg.norm(test_codes, axis=1))),
        "temperature": config.serve.temperature,
        "samples": config.evaluate.samples,
        "test_couplets": len(test),
        "test_overlap": splits.overlap(
            map(normalised, test), map(normalised, train_couplets + validation)
        ),
    }
    io.write_json(plots_dir / "temperature.json", rows)
    ends = [test[i] for i in rng.choice(len(test), 2, replace=False)] if len(test) > 1 else test * 2
    path = interpolation(sampler, ends[0], ends[1], config.evaluate.interpolation_steps)
    io.write_text(
        plots_dir / "samples.txt",
        samples_text(sampled[config.serve.temperature], greedy, ends, path, config),
    )
    return metrics, [reconstruction]


def samples_text(sampled, greedy, ends, path, config: Config) -> str:
    shown, temperature = config.evaluate.shown, config.serve.temperature
    lines = [f"# {shown} couplets, codes drawn from N(0, I), temperature {temperature}"]
    lines += [punctuated(c) for c in sampled[:shown]]
    lines += ["", f"# the same first {shown} codes, argmax (the post's decoding)"]
    lines += [punctuated(c) for c in greedy[:shown]]
    lines += ["", "# from one held-out couplet's code to another's in equal steps, argmax"]
    lines += [f"held out:  {punctuated(ends[0])}"]
    weights = np.linspace(0, 1, len(path))
    lines += [f"{w:9.2f}  {punctuated(c)}" for w, c in zip(weights, path, strict=True)]
    lines += [f"held out:  {punctuated(ends[1])}"]
    return "\n".join(lines) + "\n"


# -- serving ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoemRequest:
    count: int
    temperature: float
    seed: int | None


def poem_requests(model_input: pd.DataFrame, settings: dict) -> list[PoemRequest]:
    """Rows of `count` (1..max_poems), optional `temperature` (0 < T <= max_temperature;
    default the model's) and `seed` (0 .. 2**32 - 1; none: a fresh draw each call). MLflow's
    schema has made the request a DataFrame with a column `count` and no column it does not
    name (a record or a list of them is turned into one)."""
    if model_input.empty:
        raise serving.bad_request("input has no rows; send at least one 'count'")
    requests = []
    for row, values in enumerate(model_input.to_dict("records")):
        count = _integer(values.get("count"), "count", row)
        if count is None or not 1 <= count <= settings["max_poems"]:
            raise serving.bad_request(
                f"row {row}: 'count' must be between 1 and {settings['max_poems']}, got {count}"
            )
        seed = _integer(values.get("seed"), "seed", row)
        if seed is not None and not 0 <= seed < SEED_LIMIT:
            raise serving.bad_request(f"row {row}: 'seed' must be 0 .. 2**32 - 1, got {seed}")
        temperature = _temperature(values.get("temperature"), row, settings)
        requests.append(PoemRequest(count, temperature, seed))
    total = sum(r.count for r in requests)
    if total > settings["max_poems"]:
        raise serving.bad_request(
            f"input asks for {total} poems; the limit per request is {settings['max_poems']}"
        )
    return requests


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _integer(value, name: str, row: int) -> int | None:
    """A whole number (a float like 3.0 too: pandas turns a column with gaps into floats)."""
    if _missing(value):
        return None
    whole = isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise serving.bad_request(f"row {row}: '{name}' must be an integer, got {value!r}")
    return int(value)


def _temperature(value, row: int, settings: dict) -> float:
    if _missing(value):
        return settings["temperature"]
    if isinstance(value, bool) or not isinstance(value, (Integral, float)):
        raise serving.bad_request(f"row {row}: 'temperature' must be a number, got {value!r}")
    if not 0 < value <= settings["max_temperature"]:
        raise serving.bad_request(
            f"row {row}: 'temperature' must be above 0 and at most "
            f"{settings['max_temperature']:g}, got {value!r}"
        )
    return float(value)


class PoetPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: rows of `count`, `temperature`, `seed` in; a column `poems` out."""

    def load_context(self, context):
        self.settings = context.model_config
        self.sampler = CoupletSampler.load(
            context.artifacts["model"], context.artifacts["vocab"], self.settings["batch_size"]
        )

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        poems = []
        for request in poem_requests(model_input, self.settings):
            rng = np.random.default_rng(request.seed)
            couplets = self.sampler.sample(request.count, request.temperature, rng)
            poems.append([punctuated(c) for c in couplets])
        return pd.DataFrame({"poems": poems})


def input_example(config: Config) -> pd.DataFrame:
    """A request as a client sends one, saved beside the exported model: two seeded couplets
    at the served temperature."""
    return pd.DataFrame({"count": [2], "temperature": [config.serve.temperature], "seed": [7]})


def pyfunc(config: Config, vocab_file: Path, model_dir: Path) -> dict:
    """Arguments for mlflow.pyfunc.save_model/log_model. The schema names the columns; their
    values are of any type, as `poem_requests` checks them itself and says which row and
    column are wrong (a typed `seed` would refuse the floats pandas makes of a column with
    gaps). MLflow refuses a request without `count` and drops columns the schema does not
    name."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType, Array

    return {
        "python_model": PoetPyfunc(),
        "artifacts": {"model": str(model_dir / MODEL_FILE), "vocab": str(vocab_file)},
        "model_config": {
            "temperature": config.serve.temperature,
            "max_temperature": config.serve.max_temperature,
            "max_poems": config.serve.max_poems,
            "batch_size": config.serve.batch_size,
        },
        "signature": ModelSignature(
            inputs=Schema(
                [
                    ColSpec(AnyType(), "count"),
                    ColSpec(AnyType(), "temperature", required=False),
                    ColSpec(AnyType(), "seed", required=False),
                ]
            ),
            outputs=Schema([ColSpec(Array(DataType.string), "poems")]),
        ),
        "input_example": input_example(config),
    }
