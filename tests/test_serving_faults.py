"""A served model under bad requests: each kind gets a 4xx with a readable message, and the
server keeps answering valid requests through a long mixed stream (nothing lost)."""

import itertools

import pytest
import requests
from conftest import export_crf

from kexue.servers import served_model

pytestmark = pytest.mark.slow

N_MIXED_REQUESTS = 1000
VALID_TEXT = "我们喜欢北京公园。"
VALID_WORDS = ["我们", "喜欢", "北京", "公园", "。"]


def split_frame(columns: list[str], rows: list[list]) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}}


@pytest.fixture
def served_crf(trained_crf, mlflow_store, tmp_path):
    export_crf(trained_crf, tmp_path / "pyfunc", score=0.9)
    with served_model(tmp_path / "pyfunc", tmp_path / "serve.log") as url:
        yield url, trained_crf["config"].serve.max_request_chars


def bad_requests(max_chars: int) -> dict[str, dict]:
    """Each kind of bad request: keyword arguments for requests.post, and a word its answer
    must contain so the message tells the user what was wrong."""
    return {
        "malformed JSON": {"data": "{not json", "expect": "json"},
        "wrong column": {"json": split_frame(["sentence"], [["你好"]]), "expect": "text"},
        "not a string": {"json": split_frame(["text"], [[12]]), "expect": "string"},
        "oversized": {"json": split_frame(["text"], [["好" * (max_chars + 1)]]), "expect": "limit"},
        "no rows": {"json": split_frame(["text"], []), "expect": "no rows"},
        "empty body": {"data": "", "expect": ""},
    }


def post(session: requests.Session, url: str, request: dict) -> requests.Response:
    body = {key: value for key, value in request.items() if key in ("json", "data")}
    headers = {"Content-Type": "application/json"}
    return session.post(url, headers=headers, timeout=30, **body)


def test_each_bad_request_gets_a_4xx_with_a_message(served_crf):
    url, max_chars = served_crf
    with requests.Session() as session:
        for kind, request in bad_requests(max_chars).items():
            answer = post(session, url, request)
            assert 400 <= answer.status_code < 500, f"{kind}: {answer.status_code}"
            message = answer.json()["message"]
            assert request["expect"] in message.lower(), f"{kind}: {message}"
        valid = post(session, url, {"json": split_frame(["text"], [[VALID_TEXT], [""]])})
        assert valid.status_code == 200, valid.text
        assert valid.json()["predictions"] == [{"words": VALID_WORDS}, {"words": []}]


def test_server_keeps_answering_through_a_mixed_stream(served_crf):
    url, max_chars = served_crf
    valid = {"json": split_frame(["text"], [[VALID_TEXT]])}
    # One valid request after each bad one: half the stream is valid.
    kinds = itertools.cycle(
        [item for bad in bad_requests(max_chars).values() for item in (bad, valid)]
    )
    answered, refused = 0, 0
    with requests.Session() as session:
        for request in itertools.islice(kinds, N_MIXED_REQUESTS):
            answer = post(session, url, request)
            if request is valid:
                assert answer.status_code == 200, answer.text
                assert answer.json()["predictions"] == [{"words": VALID_WORDS}]
                answered += 1
            else:
                assert 400 <= answer.status_code < 500, answer.text
                refused += 1
    assert (answered, refused) == (N_MIXED_REQUESTS // 2, N_MIXED_REQUESTS // 2)
