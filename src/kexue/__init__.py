"""kexue: Su Jianlin's kexue.fm Keras models as a DVC pipeline tracked by MLflow."""

__version__ = "0.1.0"

import os

# TensorFlow's C++ info lines (CPU features, oneDNN) drown the pipeline's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
