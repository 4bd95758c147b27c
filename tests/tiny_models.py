"""All eight models at the default profile's sizes, trained on a few batches of tiny data (the
full-profile check's stand-ins, test_full_profile.TINY), exported as the export stage exports
them and registered in the store MLFLOW_TRACKING_URI names: what `kexue serve` serves in its
tests and benchmark. Latency is the default-size model's; what it answers is noise.

    MLFLOW_TRACKING_URI=sqlite:///$PWD/tiny.db python tests/tiny_models.py OUT_DIR
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from test_attention import SEGMENT
from test_full_profile import TINY, full_config

from kexue import models, params, registry, stats, tracking
from kexue.text.segmentation import JiebaSettings

REPO = Path(__file__).resolve().parent.parent


def default_config(name: str):
    """The model's config from params.yaml's default profile; dogs reads the full profile's
    stand-in Stanford Dogs archives (the only offline dogs data TINY makes) at default sizes."""
    loaded = params.load(REPO / "params.yaml")
    config = params.parse(models.load(name).Config, params.block(loaded, name), name)
    if name == "dogs":
        config = dataclasses.replace(config, data=full_config(name).data)
    return config


def train_and_export(name: str, root: Path) -> Path:
    """Train model `name` under `root`, export it to root/pyfunc, register it (the first
    version takes the alias `champion`); the pyfunc folder."""
    module = models.load(name)
    root.mkdir(parents=True, exist_ok=True)
    trained = TINY[name](default_config(name), root)
    config, vocab, model_dir = trained["config"], trained["vocab"], trained["model_dir"]
    metrics, scores = module.evaluate(config, trained["data"], vocab, model_dir, root / "plots")
    score = stats.model_figure(scores, module.SCORE)
    extra = (
        {"jieba": params.parse(JiebaSettings, SEGMENT, "segment")} if name == "attention" else {}
    )
    with tracking.stage_run(name, "export", {}, data_hash="tiny", description=module.DESCRIPTION):
        tracking.log_metrics({**metrics, module.SCORE: score})
        info = registry.export_pyfunc(
            root / "pyfunc", module.pyfunc(config, vocab, model_dir, **extra)
        )
        registry.register_model(
            info, config.registered_name, module.DESCRIPTION, module.SCORE, score, {},
            lambda uri: score,
        )  # fmt: skip
    return root / "pyfunc"


def build_all(out_dir: Path, names=models.MODELS) -> dict[str, Path]:
    """{model: its pyfunc folder}, each built under out_dir/<model>."""
    return {name: train_and_export(name, out_dir / name) for name in names}


if __name__ == "__main__":
    for name, folder in build_all(Path(sys.argv[1]).resolve()).items():
        print(name, folder)
