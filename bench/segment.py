"""Characters per second of the exported segmenter vs jieba, on the same test sentences.

    python bench/segment.py                 # after `dvc repro`
    python bench/segment.py --sentences 2000 --repeats 5

Both run in this process on the same CPU. "batched" sends all sentences in one call (the
served model's batch path); "one at a time" calls once per sentence, as jieba always does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from kexue import params  # noqa: E402
from kexue.models import crf  # noqa: E402
from kexue.text.segmentation import Jieba  # noqa: E402


def chars_per_second(segment: Callable[[], object], n_chars: int, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        segment()
        timings.append(time.perf_counter() - start)
    return n_chars / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/crf/pyfunc", help="exported MLflow model")
    parser.add_argument("--test", type=Path, default=Path("data/prepared/crf/test.txt"))
    parser.add_argument("--sentences", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--single", type=int, default=300, help="sentences for one-at-a-time")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = crf.char_sequences(crf.read_sentences(args.test))[: args.sentences]
    n_chars = sum(map(len, texts))
    model = mlflow.pyfunc.load_model(args.model)
    config = params.parse(crf.Config, params.block(params.load(), "crf"), "crf")
    jieba = Jieba(hmm=config.jieba.hmm)
    model.predict(pd.DataFrame({"text": texts[:64]}))  # warm-up: trace the TF graph
    jieba.cut(texts[0])  # warm-up: load jieba's dictionary

    batched = chars_per_second(
        lambda: model.predict(pd.DataFrame({"text": texts})), n_chars, args.repeats
    )
    jieba_rate = chars_per_second(lambda: [jieba.cut(t) for t in texts], n_chars, args.repeats)
    few = texts[: args.single]
    few_chars = sum(map(len, few))
    single = chars_per_second(
        lambda: [model.predict(pd.DataFrame({"text": [t]})) for t in few], few_chars, args.repeats
    )

    print(f"{len(texts)} test sentences, {n_chars} characters, median of {args.repeats} runs")
    print(f"{'':28}{'chars/s':>12}{'vs jieba':>10}")
    print(f"{'jieba (default mode, HMM)':28}{jieba_rate:12,.0f}{1.0:10.2f}")
    print(f"{'CNN+CRF pyfunc, batched':28}{batched:12,.0f}{batched / jieba_rate:10.2f}")
    print(f"{'CNN+CRF pyfunc, one by one':28}{single:12,.0f}{single / jieba_rate:10.2f}")


if __name__ == "__main__":
    main()
