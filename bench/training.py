"""Training examples per second of each model: the project's input pipeline (tf.data, as the
train stage builds it) vs a plain port of the posts' approach, a Python generator yielding
padded NumPy batches one at a time (Keras 2's `fit_generator`), feeding the same model.

    python bench/training.py                          # after `dvc repro vocab_crf ...` etc.
    python bench/training.py --models crf title --steps 100 --repeats 3

"Ours" is the very model and dataset the train stage fits: `<model>.train` runs as the stage
runs it (params.yaml, the data and vocabulary the stage reads, per dvc.yaml) until it calls
`training.fit`; that call is caught and its model and dataset are timed here. The reference
is the same model built again from the same seed (the same initial weights), fed by a
generator over the same training examples, already encoded to ids (as ours are): each epoch
it shuffles, then pads each batch to its longest row in NumPy. Keras 3 runs a generator
through `tf.data.Dataset.from_generator` and a prefetch; so does this benchmark, with the
structure and dtypes of our dataset. Both run `--steps` steps per epoch, in `--repeats`
alternated rounds (ours, reference, ours, ...) so that a change of load on the machine hits
both; a round is a warm-up epoch (tracing, the shuffle buffer filling) and a timed one. The
figure is batch size x steps / the median timed epoch. Each feed is also timed alone (no
model), with the mean width its padding leaves: where the model is the bottleneck, no feed
can speed training up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from images import python_batches  # noqa: E402  (bench/images.py: the dogs generator)

from kexue import models, params, training  # noqa: E402
from kexue.data import images  # noqa: E402
from kexue.models import attention, capsule, crf, ode, poet, similarity, title  # noqa: E402
from kexue.text.segmentation import TAG_ID, bmes_tags  # noqa: E402
from kexue.text.vocab import Vocabulary  # noqa: E402

# dogs' second training.fit call is its first on images (the first fits the head alone on
# pooled features); every other model fits once.
FIT_CALL = {"dogs": 1}
DEFAULT_STEPS = {"dogs": 10, "capsule": 20, "title": 30}  # the slow ones on 2 CPU cores
Batches = Callable[[], Iterator]


@dataclasses.dataclass
class Fitted(Exception):
    """What the train stage was about to fit."""

    model: keras.Model
    dataset: tf.data.Dataset
    callbacks: list


@contextlib.contextmanager
def fit_caught(call: int) -> Iterator[None]:
    """training.fit runs for real `call` times, then raises Fitted instead of fitting."""
    real_fit, calls = training.fit, 0

    def catch(model, train_data, *args, extra_callbacks=(), **kwargs):
        nonlocal calls
        calls += 1
        if calls <= call:
            with contextlib.redirect_stdout(sys.stderr):  # its epoch logs are not our figures
                return real_fit(model, train_data, *args, extra_callbacks=extra_callbacks, **kwargs)
        raise Fitted(model, train_data, list(extra_callbacks))

    training.fit = catch
    try:
        yield
    finally:
        training.fit = real_fit


def stage_paths(name: str, dvc_file: Path = Path("dvc.yaml")) -> tuple[Path, Path | None]:
    """(--data, --vocab) of the stage train_<name> in dvc.yaml."""
    command = shlex.split(yaml.safe_load(dvc_file.read_text())["stages"][f"train_{name}"]["cmd"])
    options = dict(zip(command[3::2], command[4::2], strict=False))
    vocab = options.get("--vocab")
    return Path(options["--data"]), Path(vocab) if vocab else None


def fitted(name: str, config, runtime: training.RuntimeConfig) -> Fitted:
    """The model and dataset the train stage of `name` fits, outputs in a temp folder."""
    data_dir, vocab_file = stage_paths(name)
    with tempfile.TemporaryDirectory(prefix="kexue-bench-") as folder:
        runtime = dataclasses.replace(runtime, backup_dir=str(Path(folder) / "backup"))
        try:
            with fit_caught(FIT_CALL.get(name, 0)):
                models.load(name).train(
                    config, runtime, data_dir, vocab_file, Path(folder), Path(folder) / "c.csv"
                )
        except Fitted as caught:
            return caught
    raise RuntimeError(f"{name}.train finished without calling training.fit")


# -- the posts' approach: a Python generator of padded NumPy batches --------------------------


def padded(rows: list[list[int]]) -> np.ndarray:
    """Rows of ids, 0-padded at the end to the longest."""
    ids = np.zeros((len(rows), max(map(len, rows))), dtype=np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids


def epochs_of_batches(count: int, batch: int, seed: int, make_batch: Callable) -> Iterator:
    """Forever: shuffle the example indices, yield make_batch(indices) per batch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(count)
        for start in range(0, count, batch):
            yield make_batch(order[start : start + batch])


def crf_batches(config, data_dir: Path, vocab_file: Path, batch: int, seed: int) -> Batches:
    vocab = Vocabulary.load(vocab_file)
    sentences = crf.read_sentences(data_dir / "train.txt")
    chars = [crf.encode_chars(vocab, "".join(s)) for s in sentences]
    tags = [[TAG_ID[t] for t in bmes_tags(s)] for s in sentences]

    def make_batch(rows):
        tag_ids = padded([[t + 1 for t in tags[i]] for i in rows]) - 1  # CRF padding is -1
        return padded([chars[i] for i in rows]), tag_ids

    return lambda: epochs_of_batches(len(chars), batch, seed, make_batch)


def attention_batches(config, data_dir: Path, vocab_file: Path, batch: int, seed: int) -> Batches:
    vocab = Vocabulary.load(vocab_file)
    _, reviews, _ = attention.read_training_splits(data_dir)
    words = [attention.word_ids(vocab, r.words, config.data.max_words) for r in reviews]
    labels = np.array([r.label for r in reviews], dtype=np.float32)
    return lambda: epochs_of_batches(
        len(words), batch, seed, lambda rows: (padded([words[i] for i in rows]), labels[rows])
    )


def title_batches(config, data_dir: Path, vocab_file: Path, batch: int, seed: int) -> Batches:
    vocab = Vocabulary.load(vocab_file)
    pairs = title.read_titled_texts(data_dir / "train.jsonl")
    texts = [vocab.encode(p.text) for p in pairs]
    titles = [[title.START_ID, *vocab.encode(p.title), title.END_ID] for p in pairs]

    def make_batch(rows):
        targets = padded([titles[i] for i in rows])
        return (padded([texts[i] for i in rows]), targets[:, :-1]), targets[:, 1:]

    return lambda: epochs_of_batches(len(texts), batch, seed, make_batch)


def similarity_batches(config, data_dir: Path, vocab_file: Path, batch: int, seed: int):
    vocab = Vocabulary.load(vocab_file)
    members = similarity.read_members(data_dir / "train.tsv")
    chars = [vocab.encode(m.text) for m in members]
    index = similarity.group_index(members)
    groups = np.array([index[m.group] for m in members], dtype=np.int32)
    return lambda: epochs_of_batches(
        len(chars), batch, seed, lambda rows: (padded([chars[i] for i in rows]), groups[rows])
    )


def poet_batches(config, data_dir: Path, vocab_file: Path, batch: int, seed: int) -> Batches:
    vocab = Vocabulary.load(vocab_file)
    couplets = poet.read_couplets(data_dir / "train.txt", config.data.line_chars)
    if config.train.max_couplets is not None:
        couplets = couplets[: config.train.max_couplets]
    ids = poet.encode(couplets, vocab)
    no_kl = np.zeros(batch, dtype=np.float32)
    return lambda: epochs_of_batches(
        len(ids),
        batch,
        seed,
        lambda rows: (ids[rows], {"couplet": ids[rows], "kl": no_kl[: len(rows)]}),
    )


def capsule_batches(config, data_dir: Path, vocab_file, batch: int, seed: int) -> Batches:
    x, y = capsule.load_npz(data_dir / "train.npz")
    classes = len(capsule.class_names(data_dir))
    digits, one_hot = capsule.as_input(x), np.eye(classes, dtype=np.float32)[y]
    shift = config.train.max_shift
    rng = np.random.default_rng(seed)

    def make_batch(rows):
        # Each digit moved by up to `shift` pixels: a crop of the zero-padded digit.
        framed = np.pad(digits[rows], [(0, 0), (shift, shift), (shift, shift), (0, 0)])
        height, width = digits.shape[1:3]
        moved = np.empty_like(digits[rows])
        for i, (dy, dx) in enumerate(rng.integers(0, 2 * shift + 1, size=(len(rows), 2))):
            moved[i] = framed[i, dy : dy + height, dx : dx + width]
        return moved, one_hot[rows]

    return lambda: epochs_of_batches(len(y), batch, seed, make_batch)


def ode_batches(config, data_dir: Path, vocab_file, batch: int, seed: int) -> Batches:
    inputs, targets, weights = ode.training_batch(
        ode.load_observations(data_dir), config.model.step
    )

    def forever():
        while True:
            yield inputs, targets, weights

    return forever


def dogs_batches(config, data_dir: Path, vocab_file, batch: int, seed: int) -> Batches:
    paths, labels, _ = images.list_split(data_dir, "train")
    size = config.model.image_size

    def forever():
        order = random.Random(seed)
        while True:
            shuffled = order.sample(range(len(paths)), len(paths))
            for x, y in python_batches(
                [paths[i] for i in shuffled], labels[shuffled], size, config.augment, batch, seed
            ):
                y = y.astype(np.int32)
                yield {"image": x, "label": y}, {"probs": y, "center": np.zeros_like(y)}

    return forever


REFERENCE = {
    "crf": crf_batches,
    "attention": attention_batches,
    "title": title_batches,
    "similarity": similarity_batches,
    "poet": poet_batches,
    "capsule": capsule_batches,
    "ode": ode_batches,
    "dogs": dogs_batches,
}


# -- timing ---------------------------------------------------------------------------------------


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def timed_epoch(caught: Fitted, dataset: tf.data.Dataset, steps: int) -> float:
    """Seconds of `steps` steps, after a warm-up epoch of as many (a new iterator: the
    shuffle buffer fills, a generator restarts; the first call also traces)."""
    timer = EpochTimes()
    caught.model.fit(
        dataset,
        steps_per_epoch=steps,
        epochs=2,
        callbacks=[timer, *caught.callbacks],
        shuffle=False,  # both feeds shuffle, as the train stage's does
        verbose=0,
    )
    return timer.seconds[1]


def any_shape(dataset: tf.data.Dataset):
    """The dataset's element structure and dtypes, every dimension free (the generator pads
    each batch to its own longest row)."""
    return tf.nest.map_structure(
        lambda spec: tf.TensorSpec([None] * spec.shape.rank, spec.dtype), dataset.element_spec
    )


def feeds(name: str) -> tuple[int, dict[str, tuple[Fitted, tf.data.Dataset]]]:
    """(batch size, {"ours": (model, dataset), "reference": (model, generator's dataset)})."""
    all_params = params.load()
    config = params.parse(models.load(name).Config, params.block(all_params, name), name)
    runtime = params.parse(training.RuntimeConfig, all_params.get("runtime"), "runtime")
    per_replica = getattr(config.train, "batch_size", 1)  # ode: one trajectory a step
    batch = training.global_batch_size(per_replica, tf.distribute.get_strategy())
    ours = fitted(name, config, runtime)
    reference = fitted(name, config, runtime)  # the same seed: the same initial weights
    data_dir, vocab_file = stage_paths(name)
    generator = REFERENCE[name](config, data_dir, vocab_file, batch, runtime.seed)
    fed = tf.data.Dataset.from_generator(generator, output_signature=any_shape(ours.dataset))
    ours_feed, reference_feed = (ours, ours.dataset.repeat()), (reference, fed.prefetch(-1))
    return batch, {"ours": ours_feed, "reference": reference_feed}


def input_alone(dataset: tf.data.Dataset, steps: int) -> tuple[float, float]:
    """(batches/s of the feed with no model, after its first batch; the mean width of the
    first input: characters, words, pixels, solver steps)."""
    batches = iter(dataset)
    next(batches)
    widths, start = [], time.perf_counter()
    for _ in range(steps):
        inputs = next(batches)[0]
        widths.append(tf.nest.flatten(inputs)[0].shape[1])
    return steps / (time.perf_counter() - start), statistics.mean(widths)


def measure(name: str, steps: int, repeats: int) -> list:
    """[batch, ours/s, reference/s, ratio, ours input batches/s, reference's, mean widths]."""
    batch, fed = feeds(name)
    alone = {feed: input_alone(dataset, steps) for feed, (_, dataset) in fed.items()}
    seconds = {feed: [] for feed in fed}
    for _ in range(repeats):  # alternated: a change of load on the machine hits both
        for feed, (caught, dataset) in fed.items():
            seconds[feed].append(timed_epoch(caught, dataset, steps))
    ours, reference = (steps * batch / statistics.median(seconds[feed]) for feed in fed)
    return [
        batch,
        ours,
        reference,
        ours / reference,
        *(alone[feed][0] for feed in fed),
        *(alone[feed][1] for feed in fed),
    ]


# Each figure's heading and format (widths match), in measure's order.
COLUMNS = [
    ("batch", "{:>7}"),
    ("ours/s", "{:>9,.0f}"),
    ("ref/s", "{:>9,.0f}"),
    ("ratio", "{:>7.2f}x"),
    ("input: ours b/s", "{:>16,.0f}"),
    ("ref b/s", "{:>9,.0f}"),
    ("width: ours", "{:>12.1f}"),
    ("ref", "{:>6.1f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", choices=list(REFERENCE), default=list(REFERENCE))
    parser.add_argument("--steps", type=int, help="steps per timed epoch (default: per model)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median counts")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs. Training examples/s (/s): batch x steps / the median of")
    print(f"{args.repeats} alternated timed epochs. Input: batches/s (b/s) of each feed alone and")
    print("its mean padded width (of the first input), over as many steps.")
    header = "".join(f"{h:>{len(f.format(0))}}" for h, f in COLUMNS)
    print(f"{'model':>10}{'steps':>7}{header}")
    for name in args.models:
        steps = args.steps or DEFAULT_STEPS.get(name, 100)
        figures = measure(name, steps, args.repeats)
        row = "".join(f.format(value) for (_, f), value in zip(COLUMNS, figures, strict=True))
        print(f"{name:>10}{steps:>7}{row}", flush=True)


if __name__ == "__main__":
    main()
