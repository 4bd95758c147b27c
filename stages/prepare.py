"""DVC stage prepare_<model>: read the raw corpora, split them into train/test files."""

import argparse
import inspect
import json
from pathlib import Path

from kexue import params

from _common import model_config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("out", type=Path, help="folder for the prepared splits")
    parser.add_argument(
        "corpora", type=Path, nargs="*", help="the raw corpus file(s); none for generated data"
    )
    args = parser.parse_args()
    all_params, module, config = model_config(args.model)
    extra = {}
    # A model that cuts raw text into words gets the `segment` stage's jieba settings.
    if "segment" in inspect.signature(module.prepare).parameters:
        extra["segment"] = params.block(all_params, "segment")
    print(json.dumps(module.prepare(config, args.corpora, args.out, **extra)))


if __name__ == "__main__":
    run(main)
