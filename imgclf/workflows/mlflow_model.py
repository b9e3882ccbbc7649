"""The MLflow pyfunc flavour of an imgclf bundle, logged as code (MLflow's "models from code": nothing is pickled).

MLflow loads this file, which names the model with ``set_model``; the
bundle is the model's ``bundle`` artifact. Input: a DataFrame with a
``path`` column (image files) or an ``image`` column (the file's bytes, or
them base64-encoded, which is how JSON carries them to ``mlflow models
serve``). Output: one row per image with ``prediction`` (a multi-label
model's labels joined by ``|``), ``confidence`` and each class's probability;
``error`` says why an image could not be read.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np


class BundleModel(mlflow.pyfunc.PythonModel):
    """An imgclf bundle behind MLflow's ``predict(DataFrame) -> DataFrame``."""

    def load_context(self, context: Any) -> None:
        from imgclf.deploy.classifier import Classifier

        self.classifier = Classifier.load(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow reads type hints as a schema)
        """One output row per input row; an unreadable image's row has ``error`` set, never an exception."""
        import pandas as pd

        from imgclf.data.decode import decode_bytes, decode_file

        classifier = self.classifier
        info = classifier.info
        size, grayscale = (info.image_size, info.image_size), info.channels == 1
        if "path" in model_input.columns:
            decoded = [decode_file(Path(path), size, info.resize, grayscale) for path in model_input["path"]]
        elif "image" in model_input.columns:
            decoded = [decode_bytes(_bytes(value), size, info.resize, grayscale) for value in model_input["image"]]
        else:
            raise ValueError("give a DataFrame with a 'path' column (image files) or an 'image' column (their bytes)")
        good = {index: item.pixels for index, item in enumerate(decoded) if item.pixels is not None}
        probabilities = np.full((len(decoded), len(classifier.classes)), np.nan, dtype=np.float32)
        if good:
            probabilities[list(good)] = classifier.predict_pixels(np.stack(list(good.values())))
        rows = [_row(classifier, probabilities[index], item.error) for index, item in enumerate(decoded)]
        return pd.DataFrame(rows)


def _bytes(value: Any) -> bytes:
    """An image's bytes as given, or decoded from base64 text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error:
        return b""  # decode_bytes reports an empty file


def _row(classifier: Any, probabilities: np.ndarray, error: str) -> dict[str, Any]:
    classes = classifier.classes
    if error:
        return {"prediction": None, "confidence": None, **dict.fromkeys(classes), "error": error}
    if classifier.info.multilabel:
        chosen = classifier.chosen_labels(probabilities)
        prediction, confidence = "|".join(chosen), float(max(probabilities[classes.index(c)] for c in chosen)) if chosen else None
    else:
        index = int(classifier.decide(probabilities[None, :])[0])
        prediction, confidence = classes[index], float(probabilities[index])
    return {"prediction": prediction, "confidence": confidence,
            **{name: float(value) for name, value in zip(classes, probabilities)}, "error": None}


mlflow.models.set_model(BundleModel())
