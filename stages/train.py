"""DVC stage train_<model>: fit the model; one MLflow run with params, curves and tags."""

import dataclasses
import hashlib
from pathlib import Path

from _common import model_config, run, stage_args

from kexue import io, params, tracking, training


def main() -> None:
    args = stage_args(__doc__, "data", "vocab", "model-dir", "curves")
    all_params, module, config = model_config(args.model)
    runtime = params.parse(training.RuntimeConfig, all_params.get("runtime"), "runtime")
    logged = params.flatten(
        {"profile": all_params.get("profile"), "runtime": runtime, args.model: config}
    )
    data_hash = io.hash_paths([args.data, args.vocab])
    # Resume only the very same training: other data or params start afresh.
    fingerprint = hashlib.sha256(f"{data_hash}{sorted(logged.items())}".encode()).hexdigest()
    backup_dir = Path(runtime.backup_dir) / f"{args.model}-{fingerprint[:16]}"
    runtime = dataclasses.replace(runtime, backup_dir=str(backup_dir))
    with tracking.stage_run(args.model, "train", logged, data_hash):
        summary = module.train(config, runtime, args.data, args.vocab, args.model_dir, args.curves)
        tracking.log_metrics(summary)
        tracking.log_artifact(args.curves, "plots")


if __name__ == "__main__":
    run(main)
