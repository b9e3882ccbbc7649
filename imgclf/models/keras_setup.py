"""Import Keras 3 on TensorFlow quietly: the one place that loads it, so every module gets the same setup.

TensorFlow's native libraries print start-up notices (oneDNN, CPU features)
straight to file descriptor 2, past Python and any log level; they would
land in the middle of ``imgclf`` output, so they are silenced while loading.

torchvision's native operators and triton (which torch loads lazily, e.g.
on an optimiser's first step) crash the process (segmentation fault) when
they load after TensorFlow's native libraries, and imgclf uses both
frameworks in one process (the shared data pipeline, compare), so they are
loaded first, always.
"""

from __future__ import annotations

import importlib.util
import os

import torchvision  # noqa: F401  (before TensorFlow; see above)

if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401  (before TensorFlow; see above)

from imgclf.console import native_stderr_silenced

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

with native_stderr_silenced():
    import keras  # noqa: F401  (re-exported: `from imgclf.models.keras_setup import keras`)
    import tensorflow as tf  # noqa: F401  (re-exported for the exporters: SavedModel, TFLite, tf.function)
