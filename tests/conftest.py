"""Shared fixtures: a tiny learnable corpus and a tiny trained segmenter (seconds to build);
the eight tiny default-size models in a store; the order and grouping of the test files."""

import contextlib
import dataclasses
import functools
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The CLI answers in the test process; tests/test_daemon.py turns its daemon on.
os.environ.setdefault("KEXUE_DAEMON", "0")

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


def train_tiny(
    module, config, corpus: Path | list[Path], root: Path, prepare=None, **prepare_options
) -> dict:
    """prepare -> vocab (a model with one) -> train one model (a kexue.models module) on a
    tiny corpus (or corpora), all under `root`: the paths, the config, prepare's counts and
    train's summary. `prepare(config, corpora, out_dir)` stands in for a model without a
    kexue.datasets module (dogs);
    `prepare_options` go to the module's prepare (attention's `segment` settings)."""
    from kexue import datasets

    data = None if prepare else datasets.load(module.__name__.rsplit(".", 1)[-1])
    vocab = root / "vocab.json" if hasattr(data, "build_vocab") else None
    paths = {"data": root / "data", "vocab": vocab, "model_dir": root / "model"}
    corpora = corpus if isinstance(corpus, list) else [corpus]
    counts = (prepare or data.prepare)(config, corpora, paths["data"], **prepare_options)
    if vocab is not None:
        data.build_vocab(config, paths["data"]).save(vocab)
    summary = module.train(
        config,
        tiny_runtime(root),
        paths["data"],
        paths["vocab"],
        paths["model_dir"],
        root / "curves.csv",
    )
    return {"root": root, "config": config, "counts": counts, "summary": summary, **paths}


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory):
    """The eight models at default sizes, trained a few steps (tests/tiny_models.py), each
    version 1 and `champion` in a SQLite store: (its folder, {model: its pyfunc folder}).
    Built once per test process; `tiny_model_project` gives each user its own store."""
    from tiny_models import build_all

    root = tmp_path_factory.mktemp("tiny-models")
    with project_store(root):
        return root, build_all(root / "models")


@contextlib.contextmanager
def project_store(root: Path) -> Iterator[None]:
    """Work in `root` with its SQLite store `root/mlruns.db`. MLflow in this process forgets
    any store before and this one after: a stage's `tracking.connect()` sets the process's
    tracking URI, which would outlive the test that set it."""
    import mlflow

    mlflow.set_tracking_uri(None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
        patch.chdir(root)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)


def tiny_model_project(store: tuple[Path, dict], root: Path) -> tuple[Path, dict]:
    """A project folder `root` (params.yaml, a copy of the tiny models' SQLite store) whose
    store holds the eight models, each version 1 and champion: what one test file may change
    (new versions, a moved alias) without another seeing it. The copied store still keeps
    model files under the built store's folder: the built ones are only read, and a new
    run's files go to a folder of their own there."""
    built, pyfuncs = store
    shutil.copy(REPO / "params.yaml", root)
    shutil.copy(built / "mlruns.db", root / "mlruns.db")
    return root, pyfuncs


# First: pytest-xdist's own hook reads the `xdist_group` marks this one adds.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Two test processes share the suite (pyproject's addopts, `--dist loadgroup`): a file's
    tests run in one process, so its module fixtures are built once, unless the file marks
    them `independent` (either process takes each) or names its own `xdist_group` (files
    sharing a fixture). Files with slow tests go first (each file's tests keep their order),
    so no process is left alone with a long file at the end while the other has nothing to
    do."""
    for item in items:
        grouped = item.get_closest_marker("xdist_group") or item.get_closest_marker("independent")
        if grouped is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture
def mlflow_store(tmp_path):
    """A fresh SQLite MLflow store for one test, in its folder: the store's URI."""
    with project_store(tmp_path):
        yield f"sqlite:///{tmp_path / 'mlruns.db'}"


def export_crf(
    trained_crf: dict,
    out_dir: Path,
    score: float,
    score_champion=None,
    metrics_file: Path | None = None,
):
    """One export_crf run: log the tiny segmenter as a pyfunc, register it with `score` as its
    test F1. The champion is scored on the tiny test split by crf.evaluate, as the stage does,
    unless `score_champion` (model URI -> score) stands in; with `metrics_file`, the version is
    tagged with its lineage as stages/export.py tags it. Returns (run, version, crowned)."""
    from kexue import registry, tracking
    from kexue.models import crf

    config = trained_crf["config"]
    if score_champion is None:
        score_champion = functools.partial(
            registry.score_on_split, module=crf, config=config, data_dir=trained_crf["data"]
        )
    with tracking.stage_run("crf", "export", {"test": 1}, data_hash="abc") as run:
        tags = {}
        if metrics_file is not None:
            model_file = trained_crf["model_dir"] / crf.MODEL_FILE
            tags = tracking.lineage_tags("crf", model_file, metrics_file)
        info = registry.export_pyfunc(
            out_dir, crf.pyfunc(config, trained_crf["vocab"], trained_crf["model_dir"])
        )
        version, crowned, _ = registry.register_model(
            info, "kexue-crf", crf.DESCRIPTION, "f1", score, tags, score_champion
        )
    return run, version, crowned


def assert_exported_with_example(pyfunc_dir: Path) -> None:
    """An exported pyfunc has a signature (with every request parameter in its example) and
    an input example, and its saved serving example scores through the loaded model into
    columns the signature names, a row per example row."""
    from mlflow.models import Model

    from kexue import registry

    model = Model.load(str(pyfunc_dir))
    signature = model.signature
    assert signature is not None and signature.inputs and signature.outputs
    assert model.saved_input_example_info["serving_input_path"] == "serving_input_example.json"
    assert (pyfunc_dir / "serving_input_example.json").is_file()
    example_params = model.load_input_example_params(str(pyfunc_dir)) or {}
    declared = signature.params.params if signature.params else []
    assert set(example_params) == {param.name for param in declared}
    out = registry.serving_example_predictions(pyfunc_dir)
    assert len(out) == len(model.load_input_example(str(pyfunc_dir))) > 0
    assert set(out.columns) <= set(signature.outputs.input_names())
