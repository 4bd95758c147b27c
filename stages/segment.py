"""DVC stage segment@<corpus>: cut every line of a text file into words with jieba."""

import argparse
from pathlib import Path

from kexue import io, params
from kexue.text.segmentation import Jieba, JiebaSettings

from _common import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", type=Path, help="UTF-8 text, one text per line")
    parser.add_argument("out", type=Path, help="the same lines, words separated by spaces")
    args = parser.parse_args()
    settings = params.parse(JiebaSettings, params.block(params.load(), "segment"), "segment")
    jieba = Jieba(hmm=settings.hmm, user_dict=settings.user_dict)
    io.write_lines(
        args.out,
        [" ".join(jieba.cut(line)) for line in io.read_lines(args.corpus, allow_empty_lines=True)],
    )


if __name__ == "__main__":
    run(main)
