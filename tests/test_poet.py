"""The couplet VAE on a tiny corpus: couplet extraction and the split by poem, the gated conv
and KL math against NumPy, sampling (temperature, never padding or unknown), a tiny training
with evaluation, the pyfunc on raw and bad input, the CLI."""

import dataclasses
import json
import random

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_exported_with_example, tiny_runtime

from kexue import cli, params, registry, stats, tracking
from kexue.datasets import poet as poet_data
from kexue.errors import DataError, IncompatibleDataError
from kexue.layers.gated_conv import GatedConv1D
from kexue.layers.gaussian_latent import GaussianSample, KLWarmup, WeightedOutput, kl_divergence
from kexue.models import poet

# Line 1 is 5 consecutive characters of the first cycle, line 2 of the second: a couplet is
# told by which characters it has, which the encoder's average sees.
FIRST, SECOND = (
    "春夏秋冬山水風月花雲江湖晴雨霜雪煙波舟橋",
    "日夜松竹梅蘭天地金石草木鳥魚龍鳳琴書酒詩",
)


def window(cycle: str, start: int) -> str:
    return "".join(cycle[(start + i) % len(cycle)] for i in range(5))


def tiny_poems(n: int, seed: int) -> list[dict]:
    """chinese-poetry records: 2-3 couplets each, plus sentences that are not couplets."""
    rng = random.Random(seed)
    poems = []
    for number in range(n):
        paragraphs = [
            f"{window(FIRST, rng.randrange(20))}，{window(SECOND, rng.randrange(20))}。"
            for _ in range(rng.randint(2, 3))
        ]
        paragraphs.append("春風吹又生野火，燒不盡。")  # 7 + 3: not a couplet
        poems.append({"title": f"詩{number}", "author": "", "paragraphs": paragraphs})
    return poems


def tiny_config() -> poet.Config:
    config = params.parse(
        poet.Config, params.block(params.load(REPO / "params.yaml"), "poet"), "poet"
    )
    return dataclasses.replace(
        config,
        corpus="unused",
        data=dataclasses.replace(
            config.data, include=["tang/*.json"], validation_fraction=0.2, test_fraction=0.2
        ),
        vocab=dataclasses.replace(config.vocab, min_count=1),
        model=dataclasses.replace(config.model, hidden_dim=16, latent_dim=8, encoder_layers=1),
        train=dataclasses.replace(
            config.train,
            epochs=40,
            patience=8,
            batch_size=32,
            learning_rate=0.01,
            max_couplets=None,
            kl_warmup_couplets=1000,  # about 6 of its 40 epochs
        ),
        evaluate=dataclasses.replace(config.evaluate, samples=200, interpolation_steps=5),
        serve=dataclasses.replace(config.serve, max_poems=50, batch_size=16),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("poet")
    (root / "corpus" / "tang").mkdir(parents=True)
    poems = tiny_poems(150, seed=1)
    (root / "corpus" / "tang" / "poet.tang.0.json").write_text(
        json.dumps(poems, ensure_ascii=False), encoding="utf-8"
    )
    config = tiny_config()
    counts = poet_data.prepare(config, [root / "corpus"], root / "data")
    poet_data.build_vocab(config, root / "data").save(root / "vocab.json")
    summary = poet.train(
        config, tiny_runtime(root), root / "data", root / "vocab.json", root / "model",
        root / "curves.csv",
    )  # fmt: skip
    return {"root": root, "config": config, "poems": poems, "counts": counts, "summary": summary}


def test_couplets_are_sentences_of_two_five_character_lines():
    text = "秦川雄帝宅，函谷壯皇居。綺殿千尋起，離宮百雉餘！□雪鏁戈鋋，非煙遶旌斾。"
    text += "行路難，行路難，君自看。寒鵰中𩩉石，落在黃河冰。"
    assert poet_data.couplets_of(text, 5) == [
        "秦川雄帝宅函谷壯皇居",
        "綺殿千尋起離宮百雉餘",
        "寒鵰中𩩉石落在黃河冰",
    ]
    assert poet_data.couplets_of("春眠不覺曉處，處聞啼鳥春眠。", 5) == []
    assert poet_data.couplets_of("春眠不覺曉處處，聞啼鳥春眠不覺。", 7) == [
        "春眠不覺曉處處聞啼鳥春眠不覺"
    ]


def test_prepare_splits_by_poem_and_holds_out_only_unseen_couplets(trained):
    root = trained["root"]
    sides = {
        name: poet.read_couplets(root / "data" / f"{name}.txt", 5)
        for name in ("train", "validation", "test")
    }
    train, validation, test = sides["train"], sides["validation"], sides["test"]
    # Disjoint as the model reads them: no held-out couplet on an earlier side.
    normalised = {name: {poet.normalised(c) for c in side} for name, side in sides.items()}
    assert not normalised["validation"] & normalised["train"]
    assert not normalised["test"] & (normalised["train"] | normalised["validation"])
    assert len(test) >= 20 and len(validation) >= 20
    assert all(len(set(side)) == len(side) for side in sides.values())
    counts = trained["counts"]
    assert counts["poems"] == 150
    assert [counts[f"{name}_couplets"] for name in sides] == [len(side) for side in sides.values()]
    assert counts["validation_overlap_dropped"] + counts["test_overlap_dropped"] > 0
    poems = [poet_data.couplets_of("".join(p["paragraphs"]), 5) for p in trained["poems"]]
    held_out = set(validation) | set(test)
    train_side = [p for p in poems if not set(p) & held_out]
    assert all(set(p) <= set(train) for p in train_side)
    # A held-out poem's couplet is either held out or also on an earlier side.
    seen = set(train) | set(validation)
    assert all(c in held_out or c in seen for p in poems if set(p) & held_out for c in p)
    assert (root / "data" / "test.txt").read_text("utf-8").splitlines()[0][5] == " "


def test_train_stops_on_the_validation_loss_and_reports_what_chose(trained):
    summary, config = trained["summary"], trained["config"]
    curves = pd.read_csv(trained["root"] / "curves.csv")
    assert summary["epochs_run"] == len(curves) <= config.train.epochs
    assert summary["best_epoch"] == int(curves["val_loss"].idxmin()) + 1
    assert summary["best_epoch"] > 1
    if summary["epochs_run"] < config.train.epochs:  # stopped early: patience epochs after
        assert summary["epochs_run"] == summary["best_epoch"] + config.train.patience
    assert summary["validation_recon_acc"] > summary["validation_recon_acc_prior_mean"]
    for t in (0, 0.5, 0.8, 1, 1.2):
        assert 0 <= summary[f"samples_t{t:g}_distinct_2"] <= 1


def test_prepare_names_a_folder_without_poems(tmp_path):
    (tmp_path / "corpus").mkdir()
    with pytest.raises(
        DataError, match=r"no file matches \['tang/\*\.json'\] \(poet\.data\.include\)"
    ):
        poet_data.prepare(tiny_config(), [tmp_path / "corpus"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bad_prepared_line_names_the_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("春夏秋冬山 日夜松竹梅\n春夏秋冬 日夜松竹梅\n", "utf-8")
    with pytest.raises(DataError, match=r"train\.txt:2: expected two lines of 5 characters"):
        poet.read_couplets(tmp_path / "train.txt", 5)


@pytest.mark.parametrize(("units", "residual"), [(None, True), (3, False)])
def test_gated_conv_matches_numpy(units, residual):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(2, 4, 5)).astype(np.float32)
    layer = GatedConv1D(units, kernel_size=3, residual=residual)
    layer.build(inputs.shape)
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    kernel, bias = np.asarray(layer.kernel), np.asarray(layer.bias)
    padded = np.pad(inputs, ((0, 0), (1, 1), (0, 0)))  # 'same' for kernel 3
    both = np.stack([np.einsum("bkc,kco->bo", padded[:, t : t + 3], kernel) for t in range(4)], 1)
    half = kernel.shape[-1] // 2
    both = both + bias
    expected = both[..., :half] / (1 + np.exp(-both[..., half:]))
    if residual:
        expected = expected + inputs
    np.testing.assert_allclose(np.asarray(layer(inputs)), expected, rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape(inputs.shape) == (2, 4, units or 5)


def test_gated_conv_saves_and_loads_as_keras(tmp_path):
    inputs = keras.Input((6, 4))
    model = keras.Model(inputs, GatedConv1D(kernel_size=3, residual=True)(inputs))
    x = np.random.default_rng(1).normal(size=(2, 6, 4)).astype(np.float32)
    model.save(tmp_path / "gcnn.keras")
    loaded = keras.models.load_model(tmp_path / "gcnn.keras")  # no custom_objects needed
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.layers[-1].get_config()["residual"] is True


def test_gated_conv_residual_needs_the_inputs_width():
    with pytest.raises(ValueError, match="residual needs units == the input's channels"):
        GatedConv1D(3, residual=True)(np.zeros((1, 4, 5), dtype=np.float32))


def test_kl_warmup_ramps_training_only_validation_weighs_the_kl_fully():
    loss = WeightedOutput(0.0)
    warmup = KLWarmup(loss, target=2.0, steps=10)
    warmup.set_model(type("Model", (), {"optimizer": keras.optimizers.Adam()})())
    warmup.model.optimizer.iterations.assign(5)
    warmup.on_train_batch_begin(0)
    assert float(loss.weight.numpy()) == pytest.approx(1.0)
    warmup.on_test_begin()
    assert float(loss.weight.numpy()) == pytest.approx(2.0)
    warmup.on_train_batch_begin(1)
    assert float(loss.weight.numpy()) == pytest.approx(1.0)


def test_kl_is_zero_at_the_prior_and_matches_a_hand_computation():
    zeros = np.zeros((3, 4), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(kl_divergence(zeros, zeros)), [0, 0, 0], atol=1e-7)
    # mean 1, variance e: each dimension gives -0.5 (1 + 1 - 1 - e) = (e - 1) / 2.
    ones = np.ones((1, 4), dtype=np.float32)
    assert float(kl_divergence(ones, ones)[0]) == pytest.approx(4 * (np.e - 1) / 2, rel=1e-5)


def test_gaussian_sample_is_the_mean_at_inference_and_a_draw_in_training():
    mean = np.full((20000, 2), 3.0, dtype=np.float32)
    log_var = np.log(np.full((20000, 2), 4.0, dtype=np.float32))
    layer = GaussianSample(seed=3)
    np.testing.assert_array_equal(np.asarray(layer([mean, log_var])), mean)
    drawn = np.asarray(layer([mean, log_var], training=True))
    assert drawn.mean() == pytest.approx(3.0, abs=0.05) and drawn.std() == pytest.approx(
        2, rel=0.03
    )


def test_choose_never_picks_padding_or_unknown_and_follows_the_temperature():
    rng = np.random.default_rng(0)
    probabilities = np.array([0.5, 0.3, 0.04, 0.16])  # pad and unknown most likely
    logits = np.broadcast_to(np.log(probabilities), (20000, 4))
    assert set(poet.choose(logits, None, rng)) == {3}
    at_one = poet.choose(logits, 1.0, rng)
    assert set(at_one) <= {2, 3} and np.mean(at_one == 3) == pytest.approx(0.8, abs=0.01)
    # T = 0.5 squares the probabilities: 0.16^2 / (0.04^2 + 0.16^2) = 16 / 17.
    assert np.mean(poet.choose(logits, 0.5, rng) == 3) == pytest.approx(16 / 17, abs=0.01)
    assert set(poet.choose(logits, 1e-3, rng)) == {3}  # toward 0: argmax


def test_sampler_draws_well_formed_ids_and_couplets(trained):
    root = trained["root"]
    sampler = poet.CoupletSampler.load(root / "model" / "model.keras", root / "vocab.json", 16)
    rng = np.random.default_rng(0)
    codes = sampler.prior_codes(37, rng)
    assert codes.shape == (37, 8)
    ids = sampler.draw(codes, 1.0, rng)
    assert ids.shape == (37, 10) and ids.min() >= 2 and ids.max() < len(sampler.vocab)
    couplets = sampler.sample(5, 0.7, rng)
    assert len(couplets) == 5 and all(poet.is_well_formed(c, 5) for c in couplets)


def test_sample_quality_by_hand():
    train_lines = {"春夏秋冬山", "日夜松竹梅"}
    couplets = ["春夏秋冬山日夜松竹梅", "春夏秋冬山花雲江湖春", "<unk>夏秋冬山日夜松竹"]
    quality = poet.sample_quality(couplets, train_lines, 5)
    assert quality["well_formed"] == pytest.approx(2 / 3)
    assert quality["novel_lines"] == pytest.approx(3 / 6)  # 花雲江湖春, <unk>夏秋…, 冬山日夜松
    assert quality["novel_couplets"] == pytest.approx(2 / 3)
    assert 0 < quality["distinct_2"] < 1


def test_tiny_vae_reconstructs_held_out_couplets_better_than_the_prior_mean(trained):
    root = trained["root"]
    metrics, scores = poet.evaluate(
        trained["config"], root / "data", root / "vocab.json", root / "model", root / "plots"
    )
    assert metrics["test_overlap"] == 0
    assert metrics["well_formed"] == 1.0 and metrics["argmax_well_formed"] == 1.0
    [reconstruction] = scores
    assert reconstruction.metric == poet.SCORE
    assert len(reconstruction.model) == len(reconstruction.baselines["prior_mean"])
    assert len(reconstruction.model) == metrics["test_couplets"]
    config = stats.BootstrapConfig(samples=200, confidence=0.95, seed=0)
    figures = stats.comparisons(scores, config)
    assert figures["recon_acc"] > figures["recon_acc_prior_mean"] + 0.2
    assert figures["recon_acc_vs_prior_mean_low"] > 0
    assert (
        metrics["samples"] == 200 and metrics["test_couplets"] == trained["counts"]["test_couplets"]
    )
    sweep = json.loads((root / "plots" / "temperature.json").read_text("utf-8"))
    assert [row["temperature"] for row in sweep] == [0.0, 0.5, 0.8, 1.0, 1.2]
    text = (root / "plots" / "samples.txt").read_text("utf-8").splitlines()
    assert sum(line.endswith("。") and "，" in line for line in text) == 20 + 20 + 2 + 5
    header = pd.read_csv(root / "curves.csv").columns
    assert {"couplet_loss", "kl_loss", "val_couplet_char_accuracy"} <= set(header)


def test_a_model_of_other_line_lengths_cannot_read_the_split(trained):
    """How a champion trained on other couplets says it cannot be scored on a new split."""
    root, config = trained["root"], trained["config"]
    chars = 2 * config.data.line_chars
    longer = dataclasses.replace(
        config, data=dataclasses.replace(config.data, line_chars=config.data.line_chars + 1)
    )
    with pytest.raises(
        IncompatibleDataError,
        match=rf"model\.keras reads couplets of {chars} characters; params\.yaml: "
        rf"poet\.data\.line_chars {chars // 2 + 1} makes them {chars + 2}",
    ):
        poet.evaluate(longer, root / "data", root / "vocab.json", root / "model", root / "plots")


@pytest.fixture(scope="module")
def pyfunc_dir(trained, tmp_path_factory):
    root = trained["root"]
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlruns.db'}")
        with tracking.stage_run("poet", "export", {}, data_hash="h"):
            registry.export_pyfunc(
                store / "pyfunc",
                poet.pyfunc(trained["config"], root / "vocab.json", root / "model"),
            )
    return store / "pyfunc"


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(pyfunc_dir):
    assert_exported_with_example(pyfunc_dir)


def test_pyfunc_answers_counts_temperatures_and_seeds(pyfunc_dir):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    out = model.predict(
        pd.DataFrame({"count": [3, 1], "temperature": [0.8, None], "seed": [7, None]})
    )
    assert list(out.columns) == ["poems"] and [len(p) for p in out["poems"]] == [3, 1]
    for couplet in out["poems"][0]:
        assert len(couplet) == 12 and couplet[5] == "，" and couplet[-1] == "。"
    again = model.predict(pd.DataFrame({"count": [3], "temperature": [0.8], "seed": [7]}))
    assert again["poems"][0] == out["poems"][0]  # the same seed, the same poems
    assert len(model.predict(pd.DataFrame({"count": [2]}))["poems"][0]) == 2
    # Records with and without a seed: pandas makes the seeds floats with a gap.
    records = model.predict([{"count": 2, "seed": 7}, {"count": 1}])
    assert [len(p) for p in records["poems"]] == [2, 1]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"count": [-3]}, r"row 0: 'count' must be between 1 and 50, got -3"),
        ({"count": [0]}, r"'count' must be between 1 and 50, got 0"),
        ({"count": [2.5]}, r"row 0: 'count' must be an integer, got 2.5"),
        ({"count": ["5"]}, r"row 0: 'count' must be an integer, got '5'"),
        ({"count": [51]}, r"'count' must be between 1 and 50, got 51"),
        ({"count": [30, 30]}, r"input asks for 60 poems; the limit per request is 50"),
        ({"count": [1], "temperature": [0.0]}, r"'temperature' must be above 0 and at most 5"),
        ({"count": [1], "temperature": [-1.0]}, r"'temperature' must be above 0"),
        ({"count": [1], "temperature": [1e9]}, r"at most 5, got 1000000000.0"),
        ({"count": [1], "temperature": ["hot"]}, r"'temperature' must be a number, got 'hot'"),
        ({"count": [1], "seed": [-1]}, r"'seed' must be 0 \.\. 2\*\*32 - 1, got -1"),
        ({"n": [1]}, r"Model is missing inputs \['count'\]"),  # the schema answers first
        ({"count": []}, r"input has no rows"),
    ],
)
def test_pyfunc_refuses_bad_requests_with_a_clear_message(pyfunc_dir, frame, message):
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(pd.DataFrame(frame))


def test_cli_poem_prints_couplets(pyfunc_dir, capsys):
    args = ["poem", "--model", str(pyfunc_dir), "-n", "4", "--seed", "1", "--temperature", "0.5"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(len(line) == 12 for line in lines)
    assert cli.main(args) == 0 and capsys.readouterr().out.splitlines() == lines


def test_cli_poem_refuses_a_negative_count_in_one_line(pyfunc_dir, capsys):
    assert cli.main(["poem", "--model", str(pyfunc_dir), "-n", "-2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kexue: row 0: 'count' must be between 1 and 50, got -2"]


def test_cli_poem_shows_simplified_characters(pyfunc_dir, capsys):
    pytest.importorskip("opencc")
    args = ["poem", "--model", str(pyfunc_dir), "-n", "20", "--seed", "3"]
    assert cli.main(args) == 0
    traditional = capsys.readouterr().out
    assert cli.main([*args, "--simplified"]) == 0
    simplified = capsys.readouterr().out
    assert [len(line) for line in simplified.splitlines()] == [12] * 20
    # 風 雲 蘭 鳥 魚 龍 鳳 書 煙 橋 are traditional; the tiny corpus uses them often.
    assert simplified != traditional and not set("風雲蘭鳥魚龍鳳書煙橋") & set(simplified)
