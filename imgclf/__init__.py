"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

__version__ = "0.1.0"

from imgclf.api import (  # noqa: E402  (the public API)
    build_index,
    calibrate,
    compare,
    embed,
    ensemble,
    evaluate,
    evaluate_match,
    explain,
    export,
    inspect,
    load,
    load_dataset,
    match,
    models,
    predict,
    preview_augment,
    query_index,
    report,
    similar,
    train,
)
from imgclf.errors import ImgclfError  # noqa: E402

__all__ = ["ImgclfError", "__version__", "build_index", "calibrate", "compare", "embed", "ensemble", "evaluate", "evaluate_match", "explain", "export",
           "inspect", "load", "load_dataset", "match", "models", "predict", "preview_augment", "query_index",
           "report", "similar", "train"]
