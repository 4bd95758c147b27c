"""DVC stage prepare_<model>: read the raw corpora, split them into train/validation/test
files, and record what they were made from (sources.json: each input's sha256)."""

import argparse
import inspect
import json
from pathlib import Path

from kexue import io, params

from _common import dataset_config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("out", type=Path, help="folder for the prepared splits")
    parser.add_argument(
        "corpora", type=Path, nargs="*", help="the raw corpus file(s); none for generated data"
    )
    args = parser.parse_args()
    all_params, module, config = dataset_config(args.model)
    extra = {}
    # A model that cuts raw text into words gets the `segment` stage's jieba settings.
    if "segment" in inspect.signature(module.prepare).parameters:
        extra["segment"] = params.block(all_params, "segment")
    counts = module.prepare(config, args.corpora, args.out, **extra)
    # A model whose params name its input (a labelled file, a folder of images) says what
    # it read.
    inputs = module.inputs(config, args.corpora) if hasattr(module, "inputs") else args.corpora
    io.write_sources(args.out, io.digests(inputs))
    print(json.dumps(counts))


if __name__ == "__main__":
    run(main)
