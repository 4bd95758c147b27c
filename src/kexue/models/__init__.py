"""One module per model. The stage scripts in stages/ call the same names in each:

    Config                                   dataclass of the model's params.yaml block
                                             (kexue.datasets.<name> defines it beside the
                                             data preparation; dogs, here)
    MODEL_FILE, SCORE, DESCRIPTION           trained file name; metric that picks the
                                             registry's champion; registered model text
    train(config, runtime, data_dir, vocab_file, model_dir, curves_file) -> summary dict:
                                             fits on train, stops early on validation; the
                                             validation figures that chose (best_epoch, ...)
    train_baselines(config, runtime, data_dir, vocab_file, baselines_dir, curves_dir)
                                             -> validation figures (models whose baselines
                                             are trained: the baseline_<model> stage)
    evaluate(config, data_dir, vocab_file, model_dir, plots_dir[, baselines_dir])
                                             -> (metrics dict, [stats.Scores]): the only
                                             reader of the test split (the registry runs
                                             it on the champion, too); metrics hold
                                             `test_overlap` (0) and the per-item scores of
                                             the model and each baseline; raises
                                             errors.IncompatibleDataError when the model
                                             cannot read the split (a class, an input
                                             shape it was not trained on)
    pyfunc(config, vocab_file, model_dir)    -> kwargs for mlflow.pyfunc.save_model
                                             (a model that reads jieba's words adds a
                                             `jieba` parameter: the `segment` settings);
                                             its artifacts `model` (MODEL_FILE, beside any
                                             other file `evaluate` reads from model_dir)
                                             and `vocab` let the registry score a
                                             champion on a new test split with `evaluate`

See models/crf.py for the first complete example.
"""

import importlib
from types import ModuleType

MODELS = ("crf", "attention", "title", "similarity", "ode", "capsule", "poet", "dogs")


def load(name: str) -> ModuleType:
    return importlib.import_module(f"kexue.models.{name}")
