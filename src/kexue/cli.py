"""`kexue`: use the registered models from a terminal.

kexue segment "今天天气不错"          # words, from the registry's champion
echo "今天天气不错" | kexue segment   # one text per input line
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from kexue import tracking
from kexue.errors import KexueError

SEGMENTER = "kexue-crf"


def _load(model_uri: str):
    mlflow = tracking.connect()
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as err:
        raise KexueError(
            f"cannot load model {model_uri}: {err.message.splitlines()[0]} "
            "(run `dvc repro` first, or pass --model PATH_OR_URI)"
        ) from None


def _texts(args: argparse.Namespace) -> list[str]:
    if args.text:
        return args.text
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def segment(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    model = _load(args.model or tracking.champion_uri(SEGMENTER))
    for words in model.predict(pd.DataFrame({"text": texts}))["words"]:
        print(" ".join(words))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kexue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    seg = verbs.add_parser("segment", help="cut Chinese text into words (CNN + CRF)")
    seg.add_argument("text", nargs="*", help="texts to segment; read from stdin when absent")
    seg.add_argument(
        "--model", help=f"model URI or folder (default: {tracking.champion_uri(SEGMENTER)})"
    )
    seg.set_defaults(run=segment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KexueError as err:
        print(f"kexue: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
