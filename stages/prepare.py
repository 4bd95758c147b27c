"""DVC stage prepare_<model>: read the raw corpora, split them into train/test files."""

import argparse
import json
from pathlib import Path

from _common import model_config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("out", type=Path, help="folder for the prepared splits")
    parser.add_argument(
        "corpora", type=Path, nargs="*", help="the raw corpus file(s); none for generated data"
    )
    args = parser.parse_args()
    _, module, config = model_config(args.model)
    print(json.dumps(module.prepare(config, args.corpora, args.out)))


if __name__ == "__main__":
    run(main)
