"""DVC stage fetch@<source>: download a pinned source, verify its hash, extract its files."""

import argparse
from pathlib import Path

from kexue import params, tracking
from kexue.data.sources import Source, fetch

from _common import run, runtime_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", help="a key of `sources` in params.yaml")
    parser.add_argument("out", type=Path, help="folder to extract the source's files into")
    args = parser.parse_args()
    all_params = params.load()
    source = Source.from_params(args.source, (all_params.get("sources") or {}).get(args.source))
    # Shared by DVC's temporary experiment workspaces: archives are verified on every use.
    runtime = runtime_config(all_params)
    cache_dir = tracking.project_root() / runtime.download_dir
    fetch(source, dest=args.out, cache_dir=cache_dir)


if __name__ == "__main__":
    run(main)
