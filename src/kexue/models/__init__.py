"""One module per model; each exposes the same stage functions (see models/crf.py)."""

import importlib
from types import ModuleType

MODELS = ("crf",)


def load(name: str) -> ModuleType:
    return importlib.import_module(f"kexue.models.{name}")
