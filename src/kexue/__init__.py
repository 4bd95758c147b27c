"""kexue: Su Jianlin's kexue.fm Keras models as a DVC pipeline tracked by MLflow."""

__version__ = "0.1.0"
