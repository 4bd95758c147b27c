"""DVC stage evaluate_<model>: score the trained model on the held-out split."""

import argparse
from pathlib import Path

from _common import model_config, run

from kexue import io, params, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="JSON for `dvc metrics`")
    parser.add_argument("--plots", type=Path, required=True, help="folder for `dvc plots`")
    args = parser.parse_args()
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
