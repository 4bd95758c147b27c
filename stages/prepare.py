"""DVC stage prepare_<model>: read the raw corpus, split it into train/test files."""

import argparse
import json
from pathlib import Path

from _common import model_config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    _, module, config = model_config(args.model)
    print(json.dumps(module.prepare(config, args.corpus, args.out)))


if __name__ == "__main__":
    run(main)
