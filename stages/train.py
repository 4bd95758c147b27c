"""DVC stage train_<model>: fit the model on the train split, choosing on the validation
split; one MLflow run with params, curves and tags; the validation figures as DVC metrics.

In a multi-worker job every worker runs this; only the chief writes the outputs and logs.
"""

import contextlib

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
    args = stage_args(__doc__, "data", "vocab", "model-dir", "curves", "validation")
    all_params, module, config = model_config(args.model)
    runtime = runtime_config(all_params)
    logged = params.flatten(
        {
            "profile": all_params.get("profile"),
            "runtime": runtime,
            "workers": training.worker_count(runtime),
            args.model: config,
        }
    )
    data_hash = training_data_hash(args.data, args.vocab)
    runtime = resumable(runtime, args.model, data_hash, logged)
    outputs = training.worker_outputs(runtime, args.model_dir, args.curves)
    # One MLflow run per job: the chief's (a worker's metrics go nowhere without a run).
    chief_run = (
        tracking.stage_run(args.model, "train", logged, data_hash, module.DESCRIPTION)
        if training.is_chief(runtime)
        else contextlib.nullcontext()
    )
    with outputs as (runtime, model_dir, curves), chief_run:
        tracking.log_inputs(data_inputs(args.data, args.vocab, training=True))
        summary = module.train(config, runtime, args.data, args.vocab, model_dir, curves)
        tracking.log_metrics(summary)
        tracking.log_artifact(curves, "plots")
        tracking.tag_output(tracking.MODEL_FILE_TAG, model_dir / module.MODEL_FILE)
    if training.is_chief(runtime):
        io.write_json(args.validation, summary)


if __name__ == "__main__":
    run(main)
