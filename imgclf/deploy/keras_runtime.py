"""The runtime of a Keras bundle (backend: tensorflow): ``model.keras`` loaded with safe mode.

Everything but the forward pass is the :class:`~imgclf.deploy.classifier.Classifier`'s:
the same decoder, resize policy, flip TTA, softmax and streaming of rows, so
``predict``, ``evaluate``, ``serve`` and the run report treat both backends
alike. ``safe_mode=True`` means a bundle cannot run code when it is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgclf.deploy.bundle import KERAS_FILE, BundleInfo
from imgclf.errors import ImgclfError, one_line

BATCH = 64  # images per forward pass


class KerasRuntime:
    """Logits from a Keras model that takes normalised float NHWC images."""

    name = "keras"

    def __init__(self, model: Any, info: BundleInfo) -> None:  # a keras.Model (Keras ships no type information)
        self.info = info
        self.model = model

    @classmethod
    def load(cls, directory: Path, info: BundleInfo) -> KerasRuntime:
        from imgclf.backends import require_tensorflow

        require_tensorflow()
        from imgclf.models import keras_models  # noqa: F401  (registers our layers for loading)
        from imgclf.models.keras_setup import keras

        try:
            model = keras.saving.load_model(directory / KERAS_FILE, safe_mode=True, compile=False)
        except Exception as error:  # Keras raises several types for a missing, damaged or unsafe file
            raise ImgclfError(f"{directory / KERAS_FILE} is not a loadable Keras model ({one_line(error)})") from None
        return cls(model, info)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, classes) float32 logits."""
        outputs = []
        for start in range(0, len(pixels), BATCH):
            batch = keras_input(pixels[start:start + BATCH], self.info)
            outputs.append(np.asarray(self.model.predict_on_batch(batch), dtype=np.float32))
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.info.classes)), dtype=np.float32)


def keras_input(pixels: np.ndarray, info: BundleInfo) -> np.ndarray:
    """uint8 NHWC -> the float32 NHWC a Keras bundle's model (or its export) takes: (x / 255 - mean) / std.

    A Keras bundle records mean 0 and std 1/255, so this is the raw 0..255
    pixels; the formula is the one every runtime and the export metadata use.
    """
    mean = np.asarray(info.mean[:info.channels], dtype=np.float32)
    std = np.asarray(info.std[:info.channels], dtype=np.float32)
    return np.ascontiguousarray((pixels.astype(np.float32) / 255.0 - mean) / std)
