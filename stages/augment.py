"""DVC stage augment: a preview grid of what each augmentation of `<model>.augment` does to a
few training images (a DVC plot and an MLflow artifact). Training augments on the fly."""

import argparse
from pathlib import Path

import numpy as np

from kexue import io, params, tracking
from kexue.data import augment, images

from _common import model_config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="a model with `augment`, `preview` and `model.image_size`")
    parser.add_argument("data", type=Path, help="the class-per-folder dataset")
    parser.add_argument("out", type=Path, help="the preview PNG")
    args = parser.parse_args()
    all_params, module, config = model_config(args.model)
    paths, labels, _ = images.list_split(args.data, "train")
    chosen = images.preview_sample(
        labels, config.preview.classes, config.preview.per_class, config.augment.seed
    )
    pixels = [images.read_pixels(paths[i], config.model.image_size) for i in chosen]
    rows = augment.preview_rows(np.stack(pixels), labels[chosen], config.augment)
    logged = params.flatten(
        {"profile": all_params.get("profile"), "augment": config.augment, "preview": config.preview}
    )
    data_hash = io.hash_paths([args.data])
    with tracking.stage_run(args.model, "augment", logged, data_hash, module.DESCRIPTION):
        with io.atomic_path(args.out) as tmp:
            tmp.write_bytes(augment.preview_png(rows))
        tracking.log_artifact(args.out, "plots")
    print(f"{args.out}: {len(rows)} rows of {len(chosen)} images")


if __name__ == "__main__":
    run(main)
