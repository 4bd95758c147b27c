"""Latency of one short request: `mlflow models serve` over HTTP on 127.0.0.1 vs the same
model's `pyfunc.predict` called in this process, on the same request.

    python bench/serving.py                           # after `dvc repro export_crf`
    python bench/serving.py models/title/pyfunc --request '{"dataframe_split":
        {"columns": ["text"], "data": [["床前明月光，疑是地上霜。"]]}}' --requests 100

The server runs in its own process group (killed as a group) with this interpreter's
packages (`--env-manager local`); one keep-alive HTTP session sends the requests one after
another. Both sides get `--warmup` untimed calls first, then up to `--requests` timed ones or
`--seconds`, whichever ends first. Prints p50 and p95 of each and served / in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402

from kexue.servers import served_model  # noqa: E402

SHORT_TEXT = {"dataframe_split": {"columns": ["text"], "data": [["今天天气不错"]]}}
PERCENTILES = (50, 95)


def frame_and_params(body: dict) -> tuple[pd.DataFrame, dict | None]:
    """The DataFrame and params a scoring server makes of a JSON request body."""
    if "dataframe_split" in body:
        frame = pd.DataFrame(**body["dataframe_split"])
    elif "dataframe_records" in body:
        frame = pd.DataFrame.from_records(body["dataframe_records"])
    else:
        raise SystemExit("--request: expected a dataframe_split or dataframe_records body")
    return frame, body.get("params")


def latencies(call: Callable[[], object], warmup: int, count: int, seconds: float) -> np.ndarray:
    """Seconds of each of up to `count` calls in at most `seconds`, after `warmup` calls."""
    for _ in range(warmup):
        call()
    timings, deadline = [], time.perf_counter() + seconds
    while len(timings) < count and time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return np.array(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default="models/crf/pyfunc", help="MLflow model")
    parser.add_argument("--request", type=json.loads, default=SHORT_TEXT, help="JSON body")
    parser.add_argument("--requests", type=int, default=500, help="timed requests at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit of each loop")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    loop = {"warmup": args.warmup, "count": args.requests, "seconds": args.seconds}

    frame, predict_params = frame_and_params(args.request)
    model = mlflow.pyfunc.load_model(args.model)
    in_process = latencies(lambda: model.predict(frame, params=predict_params), **loop)

    with (
        tempfile.TemporaryDirectory(prefix="kexue-bench-") as folder,
        served_model(args.model, Path(folder) / "serve.log") as url,
        requests.Session() as session,
    ):

        def post() -> None:
            answer = session.post(url, json=args.request, timeout=30)
            if answer.status_code != 200:
                raise SystemExit(f"{url}: HTTP {answer.status_code}: {answer.text[:300]}")

        served = latencies(post, **loop)

    print(f"{args.model}, one request {json.dumps(args.request, ensure_ascii=False)}")
    print(f"{'':24}{'calls':>7}" + "".join(f"{f'p{p} ms':>10}" for p in PERCENTILES))
    for name, timings in (("served (HTTP)", served), ("in-process predict", in_process)):
        row = "".join(f"{np.percentile(timings, p) * 1000:10.2f}" for p in PERCENTILES)
        print(f"{name:24}{len(timings):7}{row}")
    ratios = [np.percentile(served, p) / np.percentile(in_process, p) for p in PERCENTILES]
    print(f"{'served / in-process':31}" + "".join(f"{r:9.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
