"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

import logging
import sys
import types

from imgclf.api import (  # the public API
    build_index,
    calibrate,
    compare,
    diff,
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
    monitor,
    predict,
    preview_augment,
    promote,
    query_index,
    report,
    rollback,
    similar,
    train,
    tune,
    update,
    versions,
)
from imgclf.errors import ImgclfError
from imgclf.version import __version__


class _Package(types.ModuleType):
    """``imgclf.models`` is the public function. Python sets a package's attribute to its subpackage when that is
    first imported, so the first ``import imgclf.models.registry`` (training does it) turned ``imgclf.models()`` into
    a module; the subpackage stays ``sys.modules["imgclf.models"]``, which every import reads."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType) and callable(getattr(self, name, None)):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
logging.getLogger("imgclf").addHandler(logging.NullHandler())  # messages are the caller's to show (imgclf.console)

__all__ = ["ImgclfError", "__version__", "build_index", "calibrate", "compare", "diff", "embed", "ensemble", "evaluate",
           "evaluate_match", "explain", "export", "inspect", "load", "load_dataset", "match", "match_batch", "models",
           "monitor", "predict", "preview_augment", "promote", "query_index",
           "report", "rollback", "similar", "train", "tune", "update", "versions"]
