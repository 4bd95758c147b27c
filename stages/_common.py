"""What every stage script shares: params, the model's config, and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

from kexue import models, params
from kexue.errors import KexueError


def model_config(name: str) -> tuple[dict, ModuleType, object]:
    """(all params, the model's module, its checked config block)."""
    all_params = params.load()
    module = models.load(name)
    return all_params, module, params.parse(module.Config, params.block(all_params, name), name)


def run(main: Callable[[], None]) -> None:
    """Run a stage; bad input ends it with one line on stderr and exit code 1."""
    try:
        main()
    except KexueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
