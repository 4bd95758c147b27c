"""Latency of one short request: `mlflow models serve` over HTTP on 127.0.0.1 vs the same
model's `pyfunc.predict` called in this process, on the same request; with `--all`, every
model through one `kexue serve` vs `mlflow models serve` of each, and the largest request
each model's limits allow through `kexue serve`.

    python bench/serving.py                           # after `dvc repro export_crf`
    python bench/serving.py models/title/pyfunc --request '{"dataframe_split":
        {"columns": ["text"], "data": [["床前明月光，疑是地上霜。"]]}}' --requests 100
    python bench/serving.py --all                     # models/<model>/pyfunc, after `dvc repro`
    python bench/serving.py --all --models-dir DIR    # DIR/<model>/pyfunc

The server runs in its own process group (killed as a group) with this interpreter's
packages (`--env-manager local`); one keep-alive HTTP session sends the requests one after
another. Both sides get `--warmup` untimed calls first, then up to `--requests` timed ones or
`--seconds`, whichever ends first. Prints p50 and p95 of each and served / in-process.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402

from kexue.models import MODELS  # noqa: E402
from kexue.servers import kexue_serve, served_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

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


def han(count: int, rng: random.Random) -> str:
    """`count` random CJK characters: most are unknown to jieba, its slowest input."""
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(count))


def png_base64(width: int, height: int) -> str:
    from PIL import Image

    encoded = io.BytesIO()
    Image.new("L", (width, height)).save(encoded, "PNG")
    return base64.b64encode(encoded.getvalue()).decode("ascii")


def texts(column: str, rows: list[str], params: dict | None = None) -> dict:
    return {"dataframe_split": {"columns": [column], "data": [[r] for r in rows]}, "params": params}


def largest_requests(model: str, limits: dict) -> dict[str, dict]:
    """The most work each model's limits (its pyfunc's model_config) let one request ask for,
    by name: the largest legal requests, which must answer within 2 s."""
    rng = random.Random(0)
    if model == "crf":  # Viterbi walks one text's characters one after another
        return {"one text": texts("text", [han(limits["max_request_chars"], rng)])}
    if model == "attention":
        rows, chars = limits["max_rows"], limits["max_request_chars"]
        return {
            "one text": texts("text", [han(chars, rng)]),
            "most texts": texts("text", [han(chars // rows, rng) for _ in range(rows)]),
        }
    if model == "title":  # a decoding per beam, whatever the text's length
        widest, beams = limits["max_beam_width"], limits["max_beams"]
        return {
            "most beams": texts("text", [han(1, rng)] * (beams // widest), {"beam_width": widest}),
            "most texts": texts("text", [han(1, rng)] * beams, {"beam_width": 1}),
        }
    if model == "similarity":
        rows, top = limits["max_rows"], limits["max_top_k"]
        per_row = max(1, limits["max_request_chars"] // rows)
        queries = [{"query": han(per_row, rng)} for _ in range(rows)]
        return {
            "most texts": texts("text", [han(per_row, rng) for _ in range(rows)]),
            "most queries": {"dataframe_records": queries, "params": {"top_k": top}},
        }
    if model == "ode":
        times = np.linspace(0, limits["max_time"], limits["max_points"]).tolist()
        return {"most times": texts("t", times)}
    if model == "capsule":
        image = png_base64(limits["max_side"], 28)
        return {"most images": {"dataframe_records": [{"image": image}] * limits["max_images"]}}
    if model == "poet":
        count = {"count": limits["max_poems"], "temperature": limits["max_temperature"]}
        return {"most poems": {"dataframe_records": [count]}}
    if model == "dogs":
        side = int(limits["max_pixels"] ** 0.5)
        records = [{"image": png_base64(side, side)}] * limits["max_images"]
        return {
            "most pixels": {"dataframe_records": records, "params": {"top_k": limits["max_top_k"]}}
        }
    raise ValueError(f"no largest request for {model}")


def compare_all(models_dir: Path, loop: dict, rounds: int) -> None:
    """One short request a model (its serving example) through one `kexue serve` of all
    eight and through `mlflow models serve` of the model, both up at once and timed in
    alternating rounds (the load of a shared machine moves); then each model's largest
    requests through `kexue serve`."""
    from mlflow.models import Model

    folders = {m: (models_dir / m / "pyfunc").resolve() for m in MODELS}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise SystemExit(f"no exported model at {', '.join(missing)}: run `dvc repro` first")
    examples = {
        m: json.loads((f / "serving_input_example.json").read_text()) for m, f in folders.items()
    }
    each_round = {
        **loop,
        "count": max(1, loop["count"] // rounds),
        "seconds": loop["seconds"] / rounds,
    }
    rows, largest = {}, []
    with (
        tempfile.TemporaryDirectory(prefix="kexue-bench-") as folder,
        requests.Session() as session,
        kexue_serve(REPO, Path(folder) / "kexue.log", folders) as url,
    ):
        for model in MODELS:
            ours, theirs = [], []
            with served_model(folders[model], Path(folder) / f"{model}.log") as invocations:
                for _ in range(rounds):
                    ours.append(
                        timed_posts(
                            session,
                            f"{url}/models/{model}/invocations",
                            examples[model],
                            each_round,
                        )
                    )
                    theirs.append(timed_posts(session, invocations, examples[model], each_round))
            rows[model] = np.concatenate(ours), np.concatenate(theirs)
        for model in MODELS:
            limits = Model.load(str(folders[model])).flavors["python_function"]["config"]
            for case, body in largest_requests(model, limits).items():
                start = time.perf_counter()
                answer = session.post(f"{url}/models/{model}/invocations", json=body, timeout=600)
                largest.append(
                    (
                        model,
                        case,
                        len(json.dumps(body)),
                        time.perf_counter() - start,
                        answer.status_code,
                    )
                )
    print(f"one short request a model (its serving example), p50 / p95 ms; {rounds} rounds:")
    print(f"kexue serve, then mlflow models serve, each {each_round}")
    print(f"{'model':12}{'kexue serve':>18}{'mlflow serve':>18}{'p50 ratio':>11}")
    for model, (ours, theirs) in rows.items():
        cells = [
            " / ".join(f"{np.percentile(t, p) * 1000:.1f}" for p in PERCENTILES)
            for t in (ours, theirs)
        ]
        ratio = np.percentile(ours, 50) / np.percentile(theirs, 50)
        print(f"{model:12}{cells[0]:>18}{cells[1]:>18}{ratio:10.2f}x")
    print("\nthe largest request each model's limits allow, through kexue serve (one each)")
    print(f"{'model':12}{'request':14}{'body MB':>9}{'seconds':>9}{'HTTP':>6}")
    for model, case, size, seconds, status in largest:
        print(f"{model:12}{case:14}{size / 1e6:9.2f}{seconds:9.2f}{status:6}")


def timed_posts(session: requests.Session, url: str, body: dict, loop: dict) -> np.ndarray:
    def post() -> None:
        answer = session.post(url, json=body, timeout=30)
        if answer.status_code != 200:
            raise SystemExit(f"{url}: HTTP {answer.status_code}: {answer.text[:300]}")

    return latencies(post, **loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default="models/crf/pyfunc", help="MLflow model")
    parser.add_argument("--request", type=json.loads, default=SHORT_TEXT, help="JSON body")
    parser.add_argument("--requests", type=int, default=500, help="timed requests at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit of each loop")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--all", action="store_true", help="every model: kexue vs mlflow serve")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models", help="with --all")
    parser.add_argument("--rounds", type=int, default=5, help="with --all: alternating rounds")
    args = parser.parse_args()
    loop = {"warmup": args.warmup, "count": args.requests, "seconds": args.seconds}
    if args.all:
        compare_all(args.models_dir, loop, args.rounds)
        return

    frame, predict_params = frame_and_params(args.request)
    model = mlflow.pyfunc.load_model(args.model)
    in_process = latencies(lambda: model.predict(frame, params=predict_params), **loop)

    with (
        tempfile.TemporaryDirectory(prefix="kexue-bench-") as folder,
        served_model(args.model, Path(folder) / "serve.log") as url,
        requests.Session() as session,
    ):
        served = timed_posts(session, url, args.request, loop)

    print(f"{args.model}, one request {json.dumps(args.request, ensure_ascii=False)}")
    print(f"{'':24}{'calls':>7}" + "".join(f"{f'p{p} ms':>10}" for p in PERCENTILES))
    for name, timings in (("served (HTTP)", served), ("in-process predict", in_process)):
        row = "".join(f"{np.percentile(timings, p) * 1000:10.2f}" for p in PERCENTILES)
        print(f"{name:24}{len(timings):7}{row}")
    ratios = [np.percentile(served, p) / np.percentile(in_process, p) for p in PERCENTILES]
    print(f"{'served / in-process':31}" + "".join(f"{r:9.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
