"""DVC stage evaluate_<model>: the stage that reads the test split (export reads it only to
score the champion the same way). Scores the trained model and its baselines on it, item by
item, and writes each figure, each difference to a baseline and its paired bootstrap
interval (`<metric>_vs_<baseline>`, `_low`, `_high`)."""

from kexue import io, params, stats, tracking

from _common import data_inputs, evaluate_kwargs, model_config, run, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "data", "vocab", "model-dir", "baselines", "metrics", "plots", "items"
    )
    all_params, module, config = model_config(args.model)
    bootstrap = params.parse(stats.BootstrapConfig, all_params.get("bootstrap"), "bootstrap")
    logged = params.flatten(
        {"profile": all_params.get("profile"), "bootstrap": bootstrap, args.model: config}
    )
    data_hash = io.hash_paths([args.data, args.vocab, args.model_dir / module.MODEL_FILE])
    with tracking.stage_run(args.model, "evaluate", logged, data_hash, module.DESCRIPTION):
        tracking.log_inputs(data_inputs(args.data, args.vocab, training=False))
        metrics, scores = module.evaluate(
            config,
            args.data,
            args.vocab,
            args.model_dir,
            args.plots,
            **evaluate_kwargs(module, args.baselines),
        )
        metrics.update(stats.comparisons(scores, bootstrap))
        stats.write_items(args.items, scores)
        io.write_json(args.metrics, metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(args.metrics)
        tracking.log_artifact(args.items)
        for plot in sorted(args.plots.glob("*")):
            tracking.log_artifact(plot, "plots")
        tracking.tag_output(tracking.METRICS_FILE_TAG, args.metrics)
        print(metrics)


if __name__ == "__main__":
    run(main)
