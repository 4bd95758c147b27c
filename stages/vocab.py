"""DVC stage vocab_<model>: build the model's vocabulary from its training split."""

import argparse
from pathlib import Path

from _common import dataset_config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("data", type=Path, help="the model's prepared data folder")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    _, module, config = dataset_config(args.model)
    vocab = module.build_vocab(config, args.data)
    vocab.save(args.out)
    print(f"{args.out}: {len(vocab)} tokens")


if __name__ == "__main__":
    run(main)
