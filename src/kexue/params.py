"""params.yaml: load it, apply the active profile, and check each block against a dataclass.

A block may hold a `full:` sub-block of overrides; they apply when the top-level `profile`
is `full` (e.g. `dvc exp run -S profile=full`). Every value is type-checked, so a wrong
type fails at start-up with the key's dotted name instead of deep inside training.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kexue.errors import ParamsError

PROFILES = ("default", "full")
T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, but for floats as YAML 1.2 (and DVC's writer) spell them:
    `1e-05`, which `dvc exp run -S lr=1e-5` writes, has no dot and would be a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """The `serve` block of a model whose requests are texts (crf, attention, title)."""

    batch_size: int  # texts per forward pass
    max_request_chars: int  # larger requests are refused with HTTP 400


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found; run from the project root")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter blocks")
    profile = params.get("profile", "default")
    if profile not in PROFILES:
        raise ParamsError(
            f"{path}: profile: expected one of {', '.join(PROFILES)}, got {profile!r}"
        )
    return params


def block(params: dict, key: str) -> dict:
    """The block `key` with the active profile's overrides merged in."""
    value = params.get(key)
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: {key}: expected a mapping, got {_describe(value)}")
    overrides = value.get("full") or {}
    base = {k: v for k, v in value.items() if k != "full"}
    return _merge(base, overrides) if params.get("profile") == "full" else base


def parse(cls: type[T], values: Any, key: str) -> T:
    """Dataclass `cls` from a mapping, every field's type checked; `key` names it in errors."""
    if not isinstance(values, dict):
        raise ParamsError(f"params.yaml: {key}: expected a mapping, got {_describe(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ParamsError(
            f"params.yaml: {key}.{unknown[0]}: unknown key; expected one of {sorted(fields)}"
        )
    kwargs = {}
    for name in fields:
        if name not in values:
            raise ParamsError(f"params.yaml: {key}.{name}: missing")
        kwargs[name] = _check(hints[name], values[name], f"{key}.{name}")
    return cls(**kwargs)


def _check(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(option, value, key)
            except ParamsError:
                continue
        raise _type_error(key, hint, value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ParamsError(
                f"params.yaml: {key}: expected one of {list(typing.get_args(hint))}, got {value!r}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, hint, value)
        (item,) = typing.get_args(hint)
        return [_check(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, hint, value)
        _, item = typing.get_args(hint)
        return {k: _check(item, v, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int in Python; a yes/no knob must not pass as a count and vice versa.
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _type_error(key, hint, value)
    return value


def _type_error(key: str, hint: Any, value: Any) -> ParamsError:
    expected = getattr(hint, "__name__", str(hint).replace("typing.", ""))
    return ParamsError(f"params.yaml: {key}: expected {expected}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(merged[name], value)
        else:
            merged[name] = value
    return merged


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for logging params to MLflow."""
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    if not isinstance(values, dict):
        return {prefix: values}
    flat = {}
    for name, value in values.items():
        flat.update(flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return flat
