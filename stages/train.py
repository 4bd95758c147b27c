"""DVC stage train_<model>: fit the model; one MLflow run with params, curves and tags."""

from kexue import io, params, tracking

from _common import model_config, resumable, run, runtime_config, stage_args


def main() -> None:
    args = stage_args(__doc__, "data", "vocab", "model-dir", "curves")
    all_params, module, config = model_config(args.model)
    runtime = runtime_config(all_params)
    logged = params.flatten(
        {"profile": all_params.get("profile"), "runtime": runtime, args.model: config}
    )
    data_hash = io.hash_paths([args.data, args.vocab])
    runtime = resumable(runtime, args.model, data_hash, logged)
    with tracking.stage_run(args.model, "train", logged, data_hash):
        summary = module.train(config, runtime, args.data, args.vocab, args.model_dir, args.curves)
        tracking.log_metrics(summary)
        tracking.log_artifact(args.curves, "plots")


if __name__ == "__main__":
    run(main)
