"""DVC stage baseline_<model>: train the model's baselines on the model's own train and
validation splits, with the same kind of budget (early stopping on validation, the same
most epochs); a stage of its own so that changing the model's params does not retrain them.
"""

from kexue import io, params, tracking, training

from _common import (
    data_inputs,
    model_config,
    resumable,
    run,
    runtime_config,
    stage_args,
    training_data_hash,
)


def main() -> None:
    args = stage_args(__doc__, "data", "vocab", "model-dir", "curves-dir", "validation")
    all_params, module, config = model_config(args.model)
    runtime = training.on_one_machine(runtime_config(all_params))
    logged = params.flatten(
        {"profile": all_params.get("profile"), "runtime": runtime, args.model: config}
    )
    data_hash = training_data_hash(args.data, args.vocab)
    runtime = resumable(runtime, f"{args.model}-baseline", data_hash, logged)
    with tracking.stage_run(args.model, "baseline", logged, data_hash, module.DESCRIPTION):
        tracking.log_inputs(data_inputs(args.data, args.vocab, training=True))
        summary = module.train_baselines(
            config, runtime, args.data, args.vocab, args.model_dir, args.curves_dir
        )
        tracking.log_metrics(summary)
        for curves in sorted(args.curves_dir.glob("*.csv")):
            tracking.log_artifact(curves, "plots")
    io.write_json(args.validation, summary)


if __name__ == "__main__":
    run(main)
