"""`kexue serve` on 127.0.0.1 over the eight models (default sizes, trained on tiny data by
tests/tiny_models.py) in a copy of their store, one server for the whole file: the page in
headless Chromium, answers equal to the in-process pyfunc's, a mixed stream of good and bad
requests, reload after `champion` moves, and each model's largest legal request (its timing
is bench/serving.py's). KEXUE_SERVE_SCREENSHOT=docs/serve.png keeps the page's screenshot."""

import base64
import concurrent.futures
import importlib.util
import json
import math
import os
import random
import shutil
import threading

import mlflow
import pytest
import requests
from browser import Tab
from conftest import REPO, project_store, tiny_model_project

from kexue import params, registry
from kexue.models import MODELS
from kexue.serve.slots import Slot
from kexue.servers import kexue_serve

# One process runs this file and tests/test_daemon.py: the tiny models are built once for both.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_models")]


@pytest.fixture(scope="module")
def project(tiny_model_store, tmp_path_factory):
    """A project folder whose own store holds the eight models, each version 1 and champion:
    (folder, {model: its exported pyfunc folder})."""
    root, pyfuncs = tiny_model_project(tiny_model_store, tmp_path_factory.mktemp("project"))
    with project_store(root):
        yield root, pyfuncs


@pytest.fixture(scope="module")
def server(project):
    root, _ = project
    with kexue_serve(root, root / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def pyfuncs(project):
    """Each model's pyfunc, loaded in this process: what the server's answers must equal."""
    return {name: mlflow.pyfunc.load_model(str(folder)) for name, folder in project[1].items()}


def in_process(model, body: dict) -> object:
    """What `model` answers to the request `body`, as MLflow's scoring server writes it."""
    from mlflow.pyfunc import scoring_server

    answer = scoring_server.invocations(
        json.dumps(body), "application/json", model, model.metadata.get_input_schema()
    )
    assert answer.status == 200, answer.response
    return json.loads(answer.response)


@pytest.fixture(scope="module")
def examples(project, pyfuncs):
    """{model: (its serving example, the in-process answer to it)}."""
    found = {}
    for name, folder in project[1].items():
        body = json.loads((folder / "serving_input_example.json").read_text())
        found[name] = body, in_process(pyfuncs[name], body)
    return found


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serving", REPO / "bench/serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same(served, expected) -> bool:
    """Equal JSON, floats to float32 precision (the server batches as the pyfunc does)."""
    if isinstance(expected, float):
        return math.isclose(served, expected, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(expected, list):
        return len(served) == len(expected) and all(map(same, served, expected))
    if isinstance(expected, dict):
        return served.keys() == expected.keys() and all(
            same(served[k], expected[k]) for k in expected
        )
    return served == expected


def post(url: str, model: str, body) -> requests.Response:
    return requests.post(f"{url}/models/{model}/invocations", json=body, timeout=120)


def answer(model: str) -> str:
    """The page's answer element of `model`, in JavaScript."""
    return f"document.querySelector('#{model} .answer')"


def test_the_page_segments_writes_couplets_and_reads_an_uploaded_digit(
    server, project, pyfuncs, examples, tmp_path
):
    sentence = "我们喜欢北京公园"
    digit = tmp_path / "digit.png"
    digit.write_bytes(base64.b64decode(examples["capsule"][0]["dataframe_split"]["data"][0][0]))
    tab = Tab(tmp_path / "profile")
    try:
        tab.open(server)
        tab.wait_for("document.getElementById('status').textContent.startsWith('8 of 8')")
        tab.evaluate(f"document.querySelector('#crf textarea').value = '{sentence}'")
        tab.evaluate("document.querySelector('#poet input[name=count]').value = 2")
        tab.upload("#capsule input[type=file]", digit)
        tab.upload("#dogs input[type=file]", digit)
        tab.evaluate("document.querySelectorAll('button.go').forEach(b => b.click())")
        # Eight first requests at once on a small machine: minutes, not seconds, under load.
        states = {
            m: tab.wait_for(
                f"{answer(m)}.dataset.state !== 'asking' && {answer(m)}.dataset.state", 600
            )
            for m in MODELS
        }
        answers = {m: tab.evaluate(f"{answer(m)}.textContent") for m in MODELS}
        assert tab.evaluate(f"!!{answer('ode')}.querySelector('svg polyline')")
        shot = tab.screenshot(tmp_path / "serve.png")
    finally:
        tab.close()

    words = in_process(pyfuncs["crf"], {"dataframe_records": [{"text": sentence}]})
    assert answers["crf"] == " / ".join(words["predictions"][0]["words"])
    couplets = in_process(
        pyfuncs["poet"], {"dataframe_records": [{"count": 2, "temperature": 0.5, "seed": 7}]}
    )["predictions"][0]["poems"]
    assert len(couplets) == 2 and answers["poet"] == "\n".join(couplets)
    read = examples["capsule"][1]["predictions"][0]
    assert (
        answers["capsule"] == f"digit {read['label']} (two best: {', '.join(read['top2_labels'])})"
    )
    assert set(states.values()) == {"answered"}, answers
    with open(shot, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("KEXUE_SERVE_SCREENSHOT"):
        shutil.copy(shot, REPO / target)  # relative to the repo: the test runs elsewhere


def test_every_model_answers_as_its_pyfunc_does_in_process(server, examples):
    for model, (body, expected) in examples.items():
        answer = post(server, model, body)
        assert answer.status_code == 200, (model, answer.text)
        assert same(answer.json(), expected), model
    listed = {entry["model"]: entry for entry in requests.get(f"{server}/models").json()}
    assert all(entry["available"] and entry["version"] == "1" for entry in listed.values())
    assert "f1" in listed["crf"]["metrics"] and listed["crf"]["trained"]


def records(rows: list[dict], request_params: dict | None = None) -> dict:
    """requests.post arguments of a JSON body of `dataframe_records` (and `params`)."""
    return {"json": {"dataframe_records": rows, "params": request_params}}


def bad_requests(pyfuncs: dict) -> list[tuple[str, dict]]:
    """(model, requests.post arguments) of requests the server must refuse with a 4xx."""
    as_json = {"Content-Type": "application/json"}
    body_limit = params.block(params.load(REPO / "params.yaml"), "serve")["max_body_bytes"]
    crf_chars = pyfuncs["crf"].model_config["max_request_chars"]
    attention_rows = pyfuncs["attention"].model_config["max_rows"]
    return [
        ("crf", {"data": '{"dataframe_split": ', "headers": as_json}),  # not JSON
        ("crf", {"data": "", "headers": as_json}),
        ("crf", records([{"x": 1}])),  # not the signature's column
        ("crf", records([{"text": "好" * (crf_chars + 1)}])),
        ("crf", {"data": "text\n好", "headers": {"Content-Type": "text/plain"}}),
        ("crf", {"data": b"x" * (body_limit + 1), "headers": as_json}),
        ("nope", records([{"text": "好"}])),
        ("title", records([{"text": "好"}], {"beam_width": 0})),
        ("attention", records([{"text": ""}] * (attention_rows + 1))),
        ("similarity", records([{"text": "好", "query": "好"}])),
        ("ode", records([{"t": 5}, {"t": 1}])),  # times not ascending
        ("capsule", records([{"image": "not base64!"}])),
        ("dogs", records([{"image": "aGVsbG8="}])),  # base64, not an image
        ("poet", records([{"count": -1}])),
        ("poet", records([{"count": 1, "temperature": 99}])),
    ]


def test_a_mixed_stream_answers_every_good_request_and_refuses_every_bad_one(
    server, examples, pyfuncs
):
    bad = bad_requests(pyfuncs)
    rng = random.Random(0)
    stream = [
        ("good", rng.choice(list(examples))) if rng.random() < 0.5 else ("bad", rng.choice(bad))
        for _ in range(1000)
    ]

    def send(item):
        kind, what = item
        if kind == "good":
            return item, post(server, what, examples[what][0])
        model, arguments = what
        return item, requests.post(f"{server}/models/{model}/invocations", timeout=120, **arguments)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answered = list(pool.map(send, stream))
    assert len(answered) == len(stream)
    for (kind, what), answer in answered:
        if kind == "good":
            assert answer.status_code == 200 and same(answer.json(), examples[what][1]), what
        else:
            assert 400 <= answer.status_code < 500, (what[0], answer.status_code, answer.text[:200])
            message = (
                answer.json()["message"]
                if answer.headers["content-type"].startswith("application/json")
                else answer.text
            )
            assert message and "\n" not in message.strip(), message
    assert requests.get(f"{server}/health").json() == {"status": "ok"}


def test_reload_serves_the_new_champion_and_drops_no_request(server, examples):
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("kexue-crf", registry.CHAMPION)
    new = client.create_model_version("kexue-crf", champion.source, champion.run_id)
    client.set_registered_model_alias("kexue-crf", registry.CHAMPION, new.version)
    body, expected = examples["crf"]
    statuses, done = [], threading.Event()

    def keep_asking():
        while not done.is_set():
            answer = post(server, "crf", body)
            statuses.append(answer.status_code == 200 and same(answer.json(), expected))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        reloaded = requests.post(f"{server}/models/crf/reload", timeout=120).json()
    finally:
        done.set()
        asker.join()
    assert reloaded["changed"] and reloaded["version"] == str(new.version)
    assert statuses and all(statuses)
    listed = {entry["model"]: entry for entry in requests.get(f"{server}/models").json()}
    assert listed["crf"]["version"] == str(new.version)
    again = requests.post(f"{server}/models/crf/reload", timeout=120).json()
    assert not again["changed"]


def test_the_largest_legal_request_of_each_model_answers(server, pyfuncs, bench):
    for model, pyfunc in pyfuncs.items():
        for case, body in bench.largest_requests(model, pyfunc.model_config).items():
            answer = post(server, model, body)
            assert answer.status_code == 200, (model, case, answer.text[:300])


def test_a_model_without_a_champion_is_unavailable_and_says_why(project):
    slot = Slot("crf", "kexue-no-such-model")
    with pytest.raises(LookupError, match="kexue-no-such-model"):
        slot.get()
    described = slot.describe()
    assert described["available"] is False and "kexue-no-such-model" in described["error"]
