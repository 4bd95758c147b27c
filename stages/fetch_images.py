"""DVC stage fetch_images: a class-per-folder image dataset
(OUT/{train,validation,test}/<class>/<image>, OUT/counts.json; validation out of the
training images) from `dogs.data`: MNIST digits written out as PNG files (the offline
stand-in), Stanford Dogs / Oxford-IIIT Pet fetched from `sources` (verified, resumable,
safely extracted), or one's own folder of images (`dogs.data.folder`; unreadable files are
named on stderr and counted as skipped)."""

import argparse
import json
from pathlib import Path

from kexue import io, params, tracking
from kexue.data.images import ImageDataConfig, build_dataset
from kexue.data.mnist import read_mnist
from kexue.data.sources import Source

from _common import run, runtime_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="the params.yaml block whose `data` describes the images")
    parser.add_argument("out", type=Path, help="folder for the split folders of class folders")
    parser.add_argument("--mnist", type=Path, help="mnist.pkl.gz, for dataset: mnist")
    args = parser.parse_args()
    all_params = params.load()
    block = params.block(all_params, args.model)
    config = params.parse(ImageDataConfig, block.get("data"), f"{args.model}.data")
    keys = [key for key in (config.images_source, config.lists_source) if key is not None]
    declared = all_params.get("sources") or {}
    sources = {key: Source.from_params(key, declared.get(key)) for key in keys}
    mnist = None
    if config.dataset == "mnist" and args.mnist is not None:
        mnist = read_mnist(args.mnist)
    cache_dir = tracking.project_root() / runtime_config(all_params).download_dir
    counts = build_dataset(config, args.out, cache_dir, sources, mnist)
    inputs = io.digests([Path(config.folder)] if config.dataset == "folder" else [])
    inputs.update(io.digests([args.mnist]) if mnist is not None else {})
    inputs.update({s.uri: s.sha256 or s.integrity or "unverified" for s in sources.values()})
    io.write_sources(args.out, inputs)
    print(json.dumps(counts))


if __name__ == "__main__":
    run(main)
