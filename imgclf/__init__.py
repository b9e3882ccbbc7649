"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

import logging

from imgclf.api import (  # the public API
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
    match_batch,
    models,
    predict,
    preview_augment,
    query_index,
    report,
    similar,
    train,
    tune,
)
from imgclf.errors import ImgclfError
from imgclf.version import __version__

logging.getLogger("imgclf").addHandler(logging.NullHandler())  # messages are the caller's to show (imgclf.console)

__all__ = ["ImgclfError", "__version__", "build_index", "calibrate", "compare", "embed", "ensemble", "evaluate",
           "evaluate_match", "explain", "export", "inspect", "load", "load_dataset", "match", "match_batch", "models",
           "predict", "preview_augment", "query_index",
           "report", "similar", "train", "tune"]
