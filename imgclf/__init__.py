"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

__version__ = "0.1.0"

from imgclf.api import inspect, load, load_dataset, models, preview_augment, train  # noqa: E402  (the public API)
from imgclf.errors import ImgclfError  # noqa: E402

__all__ = ["ImgclfError", "__version__", "inspect", "load", "load_dataset", "models", "preview_augment", "train"]
