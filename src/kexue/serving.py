"""Input checks shared by the served (pyfunc) models: bad requests get a 400 and one line."""

from __future__ import annotations

import base64
import binascii
from numbers import Integral
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException


def bad_request(message: str) -> MlflowException:
    """MLflow's scoring server answers this with HTTP 400 and the message."""
    return MlflowException.invalid_parameter_value(message)


def int_param(params: dict | None, name: str, default: int, maximum: int) -> int:
    """The integer request parameter `name` (`default` when absent), checked to be 1..maximum."""
    value = (params or {}).get(name, default)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise bad_request(f"{name} must be an integer, got {value!r}")
    if not 1 <= value <= maximum:
        raise bad_request(f"{name} must be between 1 and {maximum}, got {value}")
    return int(value)


def text_column(model_input: Any, column: str, max_chars: int) -> list[str]:
    """The strings of `column` from a DataFrame (or a list of strings, or one string)."""
    if isinstance(model_input, str):
        texts = [model_input]
    elif isinstance(model_input, pd.DataFrame):
        if column not in model_input.columns:
            raise bad_request(f"input has no column '{column}' (got {list(model_input.columns)})")
        texts = model_input[column].tolist()
    elif isinstance(model_input, (list, tuple, pd.Series)):
        texts = list(model_input)
    else:
        raise bad_request(
            f"expected a column '{column}' of strings, got {type(model_input).__name__}"
        )
    if not texts:
        raise bad_request(f"input has no rows; send at least one '{column}' (\"\" is allowed)")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise bad_request(f"row {row}: '{column}' must be a string, got {type(text).__name__}")
    total = sum(len(t) for t in texts)
    if total > max_chars:
        raise bad_request(f"input has {total} characters; the limit per request is {max_chars}")
    return texts


def image_bytes(value: Any, row: int, column: str = "image") -> bytes:
    """The encoded image in a cell: bytes as they are, text decoded from base64 (JSON has
    no bytes, so HTTP clients send base64)."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise bad_request(f"row {row}: '{column}' text is not base64") from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise bad_request(
        f"row {row}: '{column}' must be PNG/JPEG bytes or base64 text, got {type(value).__name__}"
    )


def png_base64(pixels: Any) -> str:
    """uint8 pixels (height, width, channels) as an HTTP client sends an image: a PNG in
    base64 text, what `image_bytes` reads back."""
    import tensorflow as tf

    return base64.b64encode(tf.io.encode_png(pixels).numpy()).decode("ascii")


def image_column(model_input: Any, max_images: int, column: str = "image") -> list:
    """The cells of `column` of a DataFrame: at least one, at most `max_images`."""
    if not isinstance(model_input, pd.DataFrame) or column not in model_input.columns:
        raise bad_request(f"expected a column '{column}'")
    values = model_input[column].tolist()
    if not values:
        raise bad_request("input has no rows; send at least one image")
    if len(values) > max_images:
        raise bad_request(f"input has {len(values)} images; the limit per request is {max_images}")
    return values
