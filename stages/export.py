"""DVC stage export_<model>: save the MLflow pyfunc, register it, and crown it if it does at
least as well as the champion on its test split, where the champion is scored by the same
`evaluate` (kexue.registry)."""

import functools
import inspect

from kexue import io, params, registry, tracking
from kexue.text.segmentation import JiebaSettings

from _common import model_config, run, stage_args


def main() -> None:
    args = stage_args(__doc__, "data", "vocab", "model-dir", "metrics", "out")
    all_params, module, config = model_config(args.model)
    metrics = io.read_json(args.metrics)
    logged = params.flatten({"profile": all_params.get("profile"), args.model: config})
    data_hash = io.hash_paths([args.vocab, args.model_dir / module.MODEL_FILE])
    extra = {}
    # A model that reads jieba's words cuts raw input with the `segment` stage's settings.
    if "jieba" in inspect.signature(module.pyfunc).parameters:
        extra["jieba"] = params.parse(JiebaSettings, params.block(all_params, "segment"), "segment")
        logged.update(params.flatten({"segment": extra["jieba"]}))
    score_champion = functools.partial(
        registry.score_on_split,
        module=module,
        config=config,
        data_dir=args.data,
    )
    with tracking.stage_run(args.model, "export", logged, data_hash, module.DESCRIPTION):
        tracking.log_metrics(metrics)
        # The runs that made what this export reads, found by the files' contents.
        lineage = tracking.lineage_tags(
            args.model, args.model_dir / module.MODEL_FILE, args.metrics
        )
        model_info = registry.export_pyfunc(
            args.out, module.pyfunc(config, args.vocab, args.model_dir, **extra)
        )
        version, crowned, reason = registry.register_model(
            model_info,
            config.registered_name,
            module.DESCRIPTION,
            module.SCORE,
            metrics[module.SCORE],
            tags={"data.sha256": data_hash, **lineage, **tracking.source_tags(args.data)},
            score_champion=score_champion,
        )
    status = "now champion" if crowned else "champion unchanged"
    print(
        f"{config.registered_name} version {version} "
        f"({module.SCORE}={metrics[module.SCORE]:.4f}): {status}, {reason}"
    )


if __name__ == "__main__":
    run(main)
