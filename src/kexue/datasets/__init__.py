"""One module per model with data of its own to prepare: its params block and its data.
The prepare and vocab stages import only these, so they start without TensorFlow:

    Config                                   dataclass of the model's params.yaml block
    prepare(config, corpora, out_dir)        raw data -> fixed train / validation / test
                                             files, split and de-overlapped by kexue.splits
    inputs(config, corpora)                  (optional) what prepare reads when params, not
                                             the corpora, name it; recorded with each input's
                                             sha256 in the prepared folder's sources.json
    build_vocab(config, data_dir)            -> text.vocab.Vocabulary of the train split
                                             (models whose input is text)

The model's own module (kexue.models.<name>) imports what it reads back from here.
"""

import importlib
from types import ModuleType


def load(name: str) -> ModuleType:
    return importlib.import_module(f"kexue.datasets.{name}")
