"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

__version__ = "0.1.0"

from imgclf.api import (  # noqa: E402  (the public API)
    compare,
    evaluate,
    inspect,
    load,
    load_dataset,
    models,
    predict,
    preview_augment,
    report,
    train,
)
from imgclf.errors import ImgclfError  # noqa: E402

__all__ = ["ImgclfError", "__version__", "compare", "evaluate", "inspect", "load", "load_dataset", "models", "predict",
           "preview_augment", "report", "train"]
