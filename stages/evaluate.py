"""DVC stage evaluate_<model>: score the trained model on the held-out split."""

from _common import model_config, run, stage_args

from kexue import io, params, tracking


def main() -> None:
    args = stage_args(__doc__, "data", "vocab", "model-dir", "metrics", "plots")
    all_params, module, config = model_config(args.model)
    logged = params.flatten({"profile": all_params.get("profile"), args.model: config})
    data_hash = io.hash_paths([args.data, args.vocab, args.model_dir / module.MODEL_FILE])
    with tracking.stage_run(args.model, "evaluate", logged, data_hash):
        metrics = module.evaluate(config, args.data, args.vocab, args.model_dir, args.plots)
        io.write_json(args.metrics, metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(args.metrics)
        for plot in sorted(args.plots.glob("*")):
            tracking.log_artifact(plot, "plots")
        print(metrics)


if __name__ == "__main__":
    run(main)
