"""A model call of the `kexue` CLI, answered in this process: load the model, predict, and
turn the predictions into the JSON records `mlflow models serve` answers with.

The CLI runs it with --no-daemon; the daemon (`kexue.daemon.server`) runs the same
functions on the models it keeps loaded. So an answer, and an error's one line, is the same
with or without the daemon.

A call is a JSON-able dict, which is what the CLI sends the daemon:
    model    the model's name in params.yaml (crf, title, ...)
    source   a model URI or folder (--model), or None for the registry's champion
    columns  {column: [values]}: the pyfunc's input frame; a `binary` column holds base64
    params   the pyfunc's request parameters
    binary   the columns to decode from base64 (image files)
    config   the keys of the model's `model_config` the CLI also needs (sentiment's labels)
An answer: {"records": [{column: value}, ...], "config": {key: value}}.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from kexue.errors import KexueError


def call(model: str, columns: dict, params: dict | None = None, **options: Any) -> dict:
    """A call of model `model` (see the module docstring for `options`)."""
    return {"model": model, "source": None, "columns": columns, "params": params or {},
            "binary": [], "config": [], **options}  # fmt: skip


def run(request: dict) -> dict:
    """Answer a call in this process, from the model the CLI names (the champion by default)."""
    from kexue import cli

    return answer(load(request["source"] or cli.champion(request["model"])), request)


def load(model_uri: str):
    """The pyfunc at `model_uri`; a KexueError saying how to get one when it cannot load."""
    from kexue import tracking

    mlflow = tracking.connect()
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as err:
        raise KexueError(
            f"cannot load model {model_uri}: {err.message.splitlines()[0]} "
            "(run `dvc repro` first, or pass --model PATH_OR_URI)"
        ) from None


def answer(model, request: dict) -> dict:
    """`model`'s predictions for a call, as JSON records, and the config keys it asks for."""
    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json

    from kexue.tracking import one_line

    columns = dict(request["columns"])
    for name in request["binary"]:
        columns[name] = [base64.b64decode(value) for value in columns[name]]
    try:
        found = model.predict(pd.DataFrame(columns), params=request["params"])
    except Exception as err:  # the pyfunc's 400s (MlflowException) and schema errors alike
        raise KexueError(one_line(str(err))) from None
    encoded = io.StringIO()
    predictions_to_json(found, encoded)
    return {
        "records": json.loads(encoded.getvalue())["predictions"],
        "config": {key: model.model_config[key] for key in request["config"]},
    }
