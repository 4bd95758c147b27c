"""The `full` profile (params.yaml's `full:` blocks, meant for a GPU) on the CPU: every model,
configured as `dvc exp run -S profile=full` configures it, builds at its full size and trains
about two batches for one epoch (its baselines too, but dogs' own network from random weights),
so that a GPU run does not meet a config error an hour in.

Only the amount of data and the epochs (steps) are overridden, never what `full` sets for the
model. No full data set is at hand in a test: Stanford Dogs is a download, and the Tang and
Song poems, MNIST, Cilin and the reviews come from the pipeline's fetch stages. Tiny data in
each one's format stands in, through the model's own prepare (dogs: Stanford Dogs' archives
and lists). Dogs' ImageNet weights are a download too: its backbone (Xception, 299 px)
starts from random weights, and trains at batch size 2 to keep the CPU run short.

Run with `pytest -m full_profile` (deselected from the default run by pyproject.toml).
"""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_corpus_lines, tiny_runtime, train_tiny
from file_server import sha256
from test_attention import NEGATIVE, POSITIVE, SEGMENT, write
from test_capsule import write_mnist
from test_images import stanford_dogs
from test_poet import tiny_poems

from kexue import models, params
from kexue.data import images
from kexue.data.sources import Source

DOGS_BATCH = 2  # Xception at 299 px on a CPU: two images a step
DOGS_PHASES = ("head", "top", "all")


def full_config(name: str):
    """The model's config from the real params.yaml with the `full` profile applied."""
    loaded = params.load(REPO / "params.yaml")
    loaded["profile"] = "full"
    return params.parse(models.load(name).Config, params.block(loaded, name), name)


def replaced(config, section: str, **changes):
    """`config` with fields of its `section` sub-config changed."""
    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **changes)}
    )


def two_batches(batch_size: int, split) -> int:
    """Groups to prepare so that about two batches of them are left to train on."""
    return math.ceil(2 * batch_size / (1 - split.validation_fraction - split.test_fraction))


def write_poems(root, count: int, include: list[str]):
    """A chinese-poetry folder of `count` tiny poems, shared out among the folders of the
    `include` patterns (`tang/*.json`, `song/*.json`)."""
    folders = [pattern.split("/")[0] for pattern in include]
    for number, folder in enumerate(folders):
        poems = tiny_poems(math.ceil(count / len(folders)), seed=number)
        (root / folder).mkdir(parents=True)
        (root / folder / f"poet.{folder}.0.json").write_text(
            json.dumps(poems, ensure_ascii=False), encoding="utf-8"
        )
    return root


def reviews(lines: list[str], count: int, max_words: int, seed: int) -> list[str]:
    """`count` segmented reviews of the words of `lines`, some longer than `max_words`."""
    words = sorted({word for line in lines for word in line.split()})
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_words * 5 // 4, count, endpoint=True)
    return [" ".join(rng.choice(words, length)) for length in lengths]


def cilin(groups: int, members: int) -> str:
    """Cilin `=` lines: `groups` synonym groups of `members` phrases, no phrase in two."""
    return "".join(
        f"G{g:04d}= " + " ".join(chr(0x4E00 + g) + chr(0x5000 + m) for m in range(members)) + "\n"
        for g in range(groups)
    )


def tiny_crf(config, root) -> dict:
    paragraphs = tiny_corpus_lines(two_batches(config.train.batch_size, config.data), seed=1)
    corpus = write(root / "corpus.txt", paragraphs)
    return train_tiny(models.load("crf"), replaced(config, "train", epochs=1), corpus, root)


def tiny_attention(config, root) -> dict:
    count = two_batches(config.train.batch_size, config.data)
    corpora = [
        write(root / f"{name}.txt", reviews(lines, count // 2, config.data.max_words, seed))
        for seed, (name, lines) in enumerate((("pos", POSITIVE), ("neg", NEGATIVE)))
    ]
    # prepare's corpora for the review route: the labelled file is passed, not read.
    corpora.append(REPO / "data" / "examples" / "labelled_news.tsv")
    config = replaced(config, "train", epochs=1)
    return train_tiny(models.load("attention"), config, corpora, root, segment=SEGMENT)


def tiny_title(config, root) -> dict:
    count = two_batches(config.train.batch_size, config.data)
    corpus = write_poems(root / "corpus", count, config.data.include)
    return train_tiny(models.load("title"), replaced(config, "train", epochs=1), corpus, root)


def tiny_similarity(config, root) -> dict:
    members = 5  # a group of 3+ may lend one to validation or test
    corpus = root / "cilin.txt"
    corpus.write_text(cilin(2 * config.train.batch_size // (members - 1), members), "utf-8")
    return train_tiny(models.load("similarity"), replaced(config, "train", epochs=1), corpus, root)


def tiny_ode(config, root) -> dict:
    config = replaced(config, "train", epochs=1, steps_per_epoch=2)
    return train_tiny(models.load("ode"), config, [], root)  # generated from params


def tiny_capsule(config, root) -> dict:
    train_size = 2 * config.train.batch_size
    # Validation comes out of the training digits: enough for it and two batches.
    source = write_mnist(root / "mnist.pkl.gz", (train_size + 50, 0, 20), seed=0)
    config = replaced(config, "data", train_size=train_size, pairs=10)
    return train_tiny(models.load("capsule"), replaced(config, "train", epochs=1), source, root)


def tiny_poet(config, root) -> dict:
    # 80 poems: some 150 distinct couplets, and held-out ones that training does not have.
    corpus = write_poems(root / "corpus", 80, config.data.include)
    config = replaced(config, "train", epochs=1, max_couplets=2 * config.train.batch_size)
    return train_tiny(models.load("poet"), config, corpus, root)


def tiny_dogs(config, root) -> dict:
    """Stanford Dogs' archives in their own layout (3 breeds, 3 training and 1 test photo
    each; the profile holds out up to 10 a breed, leaving one to train on), fetched from
    files as `sources` would fetch them."""
    images_tar, lists_tar, _ = stanford_dogs(per_breed=3, test_per_breed=1)
    sources = {}
    archives = {config.data.images_source: images_tar, config.data.lists_source: lists_tar}
    for key, data in archives.items():
        archive = root / f"{key}.tar"
        archive.write_bytes(data)
        block = {"uri": f"file:{archive}", "archive": archive.name, "sha256": sha256(data)}
        sources[key] = Source.from_params(key, block)

    def prepare(config, corpora, out_dir):
        return images.build_dataset(config.data, out_dir, root / "downloads", sources)

    train = config.train
    config = replaced(
        replaced(config, "model", weights=None),  # ImageNet's are a download: random ones
        "train",
        batch_size=DOGS_BATCH,
        **{phase: dataclasses.replace(getattr(train, phase), epochs=1) for phase in DOGS_PHASES},
    )
    return train_tiny(models.load("dogs"), config, [], root, prepare)


TINY = {
    "crf": tiny_crf,
    "attention": tiny_attention,
    "title": tiny_title,
    "similarity": tiny_similarity,
    "ode": tiny_ode,
    "capsule": tiny_capsule,
    "poet": tiny_poet,
    "dogs": tiny_dogs,
}


@pytest.mark.slow
@pytest.mark.full_profile
@pytest.mark.independent
@pytest.mark.parametrize("name", models.MODELS)
def test_full_profile_builds_and_trains_on_the_cpu(name, tmp_path):
    trained = TINY[name](full_config(name), tmp_path)
    module, curves = models.load(name), [tmp_path / "curves.csv"]
    assert (trained["model_dir"] / module.MODEL_FILE).is_file()
    # Dogs' baseline is the same network trained whole from random weights: at full size its
    # `all` phase has just built and trained it.
    if hasattr(module, "train_baselines") and name != "dogs":
        module.train_baselines(
            trained["config"],
            tiny_runtime(tmp_path),
            trained["data"],
            trained["vocab"],
            tmp_path / "baselines",
            tmp_path / "baseline_curves",
        )
        curves += sorted((tmp_path / "baseline_curves").glob("*.csv"))
        assert len(curves) > 1
    for path in curves:
        assert np.isfinite(pd.read_csv(path)["loss"]).all(), path
