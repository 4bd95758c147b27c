"""kexue: Su Jianlin's kexue.fm Keras models as a DVC pipeline tracked by MLflow."""

__version__ = "0.1.0"

import importlib.abc
import os
import sys

# TensorFlow's C++ info lines (CPU features, oneDNN) drown the pipeline's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _KerasSkipsOptionalExtras(importlib.abc.MetaPathFinder):
    """Keras imports scikit-learn (for its estimator wrappers) and matplotlib (for image
    galleries) at start-up whenever they are installed, and MLflow installs both: about a
    third of `import tensorflow`, paid by every stage that trains, evaluates or exports.
    The project uses neither from Keras, so Keras alone finds them missing (its own
    fallback); every other importer, MLflow included, gets them as usual."""

    HIDDEN = frozenset({"sklearn", "matplotlib.pyplot"})

    def find_spec(self, name, path=None, target=None):
        if name in self.HIDDEN and _importer(sys._getframe(1)).startswith("keras."):
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded for Keras)")
        return None


def _importer(frame) -> str:
    """The module whose import statement is being run, past importlib's own frames."""
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


if not any(isinstance(finder, _KerasSkipsOptionalExtras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _KerasSkipsOptionalExtras())
