"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

__version__ = "0.1.0"

from imgclf.api import (  # noqa: E402  (the public API)
    evaluate,
    export,
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

__all__ = ["ImgclfError", "__version__", "evaluate", "export", "inspect", "load", "load_dataset", "models", "predict",
           "preview_augment", "report", "train"]
