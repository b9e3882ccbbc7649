"""Import Keras 3 on TensorFlow quietly: the one place that loads it, so every module gets the same setup.

TensorFlow's native libraries print start-up notices (oneDNN, absl) straight
to file descriptor 2, past Python and any log level; they would land in the
middle of ``imgclf`` output, so stderr is closed to them while they load.
An import that fails still raises its Python exception.

torchvision is imported first, always: its native operators crash the
process (segmentation fault) when they load after TensorFlow's libraries,
and imgclf uses both in one process (the shared data pipeline, compare).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import torchvision  # noqa: E402, F401  (before TensorFlow; see above)


def _import_quietly() -> object:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras as module
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return module


keras = _import_quietly()
