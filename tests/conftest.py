"""Shared fixtures: a tiny learnable corpus and a tiny trained segmenter (seconds to build)."""

import dataclasses
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
# The loopback HTTP file server fixture (`server`) of the download tests.
pytest_plugins = ["file_server"]
# Words with no shared characters, so a tiny model can learn every boundary.
TINY_WORDS = ["我们", "喜欢", "北京", "公园", "散步", "很", "好", "图书馆", "。"]


def tiny_corpus_lines(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(TINY_WORDS[:-1]) for _ in range(rng.randint(2, 6))] + ["。"]
        lines.append("  ".join(f"{w}/x" for w in words))
    return lines


def tiny_crf_config():
    """The project's crf config shrunk to train in seconds."""
    from kexue import params
    from kexue.models import crf

    config = params.parse(crf.Config, params.block(params.load(REPO / "params.yaml"), "crf"), "crf")
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, embedding_dim=16, conv_filters=16, conv_layers=1),
        train=dataclasses.replace(config.train, epochs=12, batch_size=16, learning_rate=0.02),
    )


def tiny_runtime(root: Path):
    """CPU, float32, seeded; backups and downloads under `root`."""
    from kexue import training

    return training.RuntimeConfig(
        seed=1,
        strategy="cpu",
        mixed_precision="off",
        deterministic=False,
        backup_dir=str(root / "backup"),
        download_dir=str(root / "downloads"),
    )


@pytest.fixture(scope="session")
def trained_crf(tmp_path_factory):
    """A tiny CNN+CRF trained on the tiny corpus: paths to its data, vocab and model."""
    from kexue.models import crf

    root = tmp_path_factory.mktemp("crf")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tiny_corpus_lines(300, seed=1)) + "\n", encoding="utf-8")
    return train_tiny(crf, tiny_crf_config(), corpus, root)


def train_tiny(module, config, corpus: Path | list[Path], root: Path, **prepare_options) -> dict:
    """prepare -> vocab -> train one model (a kexue.models module) on a tiny corpus (or
    corpora), all under `root`: the paths, the config, prepare's counts and train's summary.
    `prepare_options` go to the module's prepare (attention's `segment` settings)."""
    paths = {"data": root / "data", "vocab": root / "vocab.json", "model_dir": root / "model"}
    counts = module.prepare(
        config, corpus if isinstance(corpus, list) else [corpus], paths["data"], **prepare_options
    )
    module.build_vocab(config, paths["data"]).save(paths["vocab"])
    summary = module.train(
        config,
        tiny_runtime(root),
        paths["data"],
        paths["vocab"],
        paths["model_dir"],
        root / "curves.csv",
    )
    return {"root": root, "config": config, "counts": counts, "summary": summary, **paths}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def export_crf(trained_crf: dict, out_dir: Path, score: float):
    """One export_crf run: log the tiny segmenter as a pyfunc, register it with `score` as its
    test F1. Returns (run, version, crowned)."""
    from kexue import registry, tracking
    from kexue.models import crf

    config = trained_crf["config"]
    with tracking.stage_run("crf", "export", {"test": 1}, data_hash="abc") as run:
        info = registry.export_pyfunc(
            out_dir, crf.pyfunc(config, trained_crf["vocab"], trained_crf["model_dir"])
        )
        version, crowned = registry.register_model(
            info, "kexue-crf", crf.DESCRIPTION, "f1", score, {}
        )
    return run, version, crowned
