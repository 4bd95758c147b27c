"""The `runtime` block of params.yaml: how and where every stage runs.

Apart from kexue.training so that the stages which never train (fetch, segment) start
without importing TensorFlow, which is most of a light stage's time.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    seed: int
    strategy: Literal["auto", "cpu", "mirrored", "multi_worker"]
    mixed_precision: Literal["auto", "on", "off"]
    deterministic: bool
    backup_dir: str
    download_dir: str
