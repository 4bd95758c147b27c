"""DVC stage evaluate_<model>: score the trained model on the held-out split."""

import inspect

from kexue import io, params, tracking, training

from _common import model_config, resumable, run, runtime_config, stage_args


def main() -> None:
    args = stage_args(__doc__, "data", "vocab", "model-dir", "metrics", "plots")
    all_params, module, config = model_config(args.model)
    logged = {"profile": all_params.get("profile"), args.model: config}
    data_hash = io.hash_paths([args.data, args.vocab, args.model_dir / module.MODEL_FILE])
    extra = {}
    # A model that trains a baseline while evaluating takes the runtime (seed, devices).
    if "runtime" in inspect.signature(module.evaluate).parameters:
        logged["runtime"] = training.on_one_machine(runtime_config(all_params))
        extra["runtime"] = resumable(
            logged["runtime"], f"{args.model}-evaluate", data_hash, params.flatten(logged)
        )
    logged = params.flatten(logged)
    with tracking.stage_run(args.model, "evaluate", logged, data_hash):
        metrics = module.evaluate(
            config, args.data, args.vocab, args.model_dir, args.plots, **extra
        )
        io.write_json(args.metrics, metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(args.metrics)
        for plot in sorted(args.plots.glob("*")):
            tracking.log_artifact(plot, "plots")
        print(metrics)


if __name__ == "__main__":
    run(main)
