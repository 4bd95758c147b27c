"""One module per model. The stage scripts in stages/ call the same names in each:

    Config                                   dataclass of the model's params.yaml block
    MODEL_FILE, SCORE, DESCRIPTION           trained file name; metric that picks the
                                             registry's champion; registered model text
    prepare(config, corpora, out_dir)        raw corpus files -> fixed train/test split
    build_vocab(config, data_dir)            -> text.vocab.Vocabulary of the train split
    train(config, runtime, data_dir, vocab_file, model_dir, curves_file) -> summary dict
    evaluate(config, data_dir, vocab_file, model_dir, plots_dir) -> metrics dict
                                             (a model that trains a baseline there adds a
                                             `runtime` parameter; the stage passes it)
    pyfunc(config, vocab_file, model_dir)    -> kwargs for mlflow.pyfunc.save_model
                                             (a model that reads jieba's words adds a
                                             `jieba` parameter: the `segment` settings)

See models/crf.py for the first complete example.
"""

import importlib
from types import ModuleType

MODELS = ("crf", "attention", "title", "similarity", "ode", "capsule", "poet", "dogs")


def load(name: str) -> ModuleType:
    return importlib.import_module(f"kexue.models.{name}")
