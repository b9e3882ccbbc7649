"""A :class:`Classifier` whose model is a Keras bundle's ``model.keras`` (backend: tensorflow).

Everything but the forward pass is the torch classifier's: the same
decoder, resize policy and streaming of rows, so ``predict``, ``evaluate``
and the run report treat both backends alike. The file is loaded with
``safe_mode=True``: a bundle cannot run code when it is opened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf.deploy.bundle import KERAS_FILE, BundleInfo
from imgclf.deploy.classifier import Classifier
from imgclf.errors import ImgclfError

BATCH = 64  # images per forward pass


class KerasClassifier(Classifier):
    """Classes, preprocessing and a Keras model; ``model(pixels)`` takes 0..255 NHWC floats and gives logits."""

    def __init__(self, model: object, info: BundleInfo, tta: bool | None = None) -> None:
        self.info = info
        self.classes = list(info.classes)
        self.tta = info.tta if tta is None else tta
        self.model = model

    @classmethod
    def from_bundle(cls, directory: Path, info: BundleInfo, tta: bool | None = None) -> KerasClassifier:
        from imgclf.engines.keras_setup import keras
        from imgclf.models import keras_models  # noqa: F401  (registers our layers for loading)

        try:
            model = keras.saving.load_model(directory / KERAS_FILE, safe_mode=True, compile=False)
        except Exception as error:  # Keras raises several types for a missing, damaged or unsafe file
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ImgclfError(f"{directory / KERAS_FILE} is not a loadable Keras model ({first_line})") from None
        return cls(model, info, tta=tta)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities for decoded uint8 images (N, H, W, C) at the model's input size."""

        if not len(pixels):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        mean = np.asarray(self.info.mean, dtype=np.float32)
        std = np.asarray(self.info.std, dtype=np.float32)
        outputs = []
        for start in range(0, len(pixels), BATCH):
            batch = (pixels[start:start + BATCH].astype(np.float32) / 255.0 - mean) / std
            logits = self.model.predict_on_batch(batch)  # type: ignore[attr-defined]
            if self.tta:
                flipped = np.ascontiguousarray(batch[:, :, ::-1])
                logits = 0.5 * (logits + self.model.predict_on_batch(flipped))  # type: ignore[attr-defined]
            outputs.append(logits.astype(np.float64))
        logits = np.concatenate(outputs)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
