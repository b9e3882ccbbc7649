"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

__version__ = "0.1.0"

from imgclf.api import inspect, load_dataset, preview_augment  # noqa: E402  (the public API)
from imgclf.errors import ImgclfError  # noqa: E402

__all__ = ["ImgclfError", "__version__", "inspect", "load_dataset", "preview_augment"]
