"""DVC stage export_<model>: save the MLflow pyfunc, register it, crown it if it is best."""

import argparse
from pathlib import Path

from _common import model_config, run

from kexue import io, params, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the MLflow model")
    args = parser.parse_args()
    all_params, module, config = model_config(args.model)
    metrics = io.read_json(args.metrics)
    logged = params.flatten({"profile": all_params.get("profile"), args.model: config})
    data_hash = io.hash_paths([args.vocab, args.model_dir / module.MODEL_FILE])
    with tracking.stage_run(args.model, "export", logged, data_hash):
        tracking.log_metrics(metrics)
        model_info = tracking.export_pyfunc(
            args.out, module.pyfunc(config, args.vocab, args.model_dir)
        )
        version, champion = tracking.register_model(
            model_info,
            config.registered_name,
            module.DESCRIPTION,
            module.SCORE,
            metrics[module.SCORE],
            tags={"data.sha256": data_hash},
        )
    status = "now champion" if champion else "champion unchanged"
    print(
        f"{config.registered_name} version {version} "
        f"({module.SCORE}={metrics[module.SCORE]:.4f}): {status}"
    )


if __name__ == "__main__":
    run(main)
