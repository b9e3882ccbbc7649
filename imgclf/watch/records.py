"""One answer as the log keeps it: what a request hands over (cheap), and the row the writer thread makes of it.

The request path only builds an :class:`Observation` (the answer, the
image's bytes or path, the embedding row it already has); hashing, reading
the image's header, copying it and scoring novelty happen in the writer
thread (:func:`row_of`), so none of it is on a request's clock.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.hierarchy import Hierarchy
from imgclf.deploy.predict import PredictionRow

TOP_K = 5  # classes kept per row, the decided one first
EMBEDDING_DTYPE = "float16"  # half the bytes of float32; cosine similarities agree to ~1e-3


@dataclass
class Observation:
    """A classified image and its answer, as serve or predict hand it to the log."""

    created_at: float
    source: str  # serve | predict
    request_id: str
    name: str
    prediction: str
    confidence: float | None
    top: list[tuple[str, float]]
    threshold: float | None
    unknown: bool
    level: int | None
    image: bytes | Path  # serve: the uploaded bytes; predict: the file (read in the writer thread)
    features: np.ndarray | None  # (D,) pooled features of the forward pass that answered, or None
    bundle: Path | None = None  # the bundle folder of the model that answered (None: the log's own)


def decision_threshold(classifier: Any) -> float | None:
    """The threshold a binary model decides at, when its bundle stores one; else None."""
    decision = getattr(classifier, "decision", None)
    if decision is None or classifier.classes[decision[0]] not in classifier.info.thresholds:
        return None
    return float(decision[1])


def observation_of_row(row: PredictionRow, request_id: str, threshold: float | None, created_at: float
                       ) -> Observation:
    """predict's answer for one file as an observation (``threshold``: a binary model's, else --min-confidence)."""
    if row.levels:
        answer = Hierarchy.back_off(row.levels, row.min_confidence)
        unknown, level = answer is None, None if answer is None else answer.depth
    else:
        unknown, level = row.labels is None and bool(row.top) and row.top[0][1] < row.min_confidence, None
    return Observation(created_at=created_at, source="predict", request_id=request_id, name=row.path,
                       prediction=row.prediction, confidence=row.confidence, top=row.top,
                       threshold=threshold if threshold is not None else (row.min_confidence or None),
                       unknown=unknown, level=level, image=Path(row.path).absolute(), features=row.features)


@dataclass(frozen=True)
class ImageFacts:
    """What the log records of the image itself."""

    sha256: str
    size: int
    width: int | None
    height: int | None
    image_format: str | None


def image_facts(data: bytes) -> ImageFacts:
    """Hash, byte count and (from the header only) the size and format of an encoded image."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height, image_format = header.width, header.height, header.format
    except Exception:  # Pillow raises several types for bytes it cannot read; the row records no size then
        width = height = image_format = None
    return ImageFacts(hashlib.sha256(data).hexdigest(), len(data), width, height, image_format)


def image_bytes(observation: Observation) -> bytes | None:
    """The observation's encoded image; None when predict's file can no longer be read."""
    if isinstance(observation.image, bytes):
        return observation.image
    try:
        return observation.image.read_bytes()
    except OSError:
        return None


def embedding_blob(features: np.ndarray | None) -> bytes | None:
    """An embedding row as stored: little-endian float16 bytes (``np.frombuffer(blob, '<f2')`` reads it back)."""
    return None if features is None else np.asarray(features, dtype="<f2").tobytes()


def row_of(observation: Observation, model_version: str, model_name: str, facts: ImageFacts | None,
           image_path: Path | None) -> dict[str, Any]:
    """The ``predictions`` row of an observation, less the novelty and queue columns (the log adds those)."""
    features = observation.features
    return {
        "created_at": observation.created_at, "source": observation.source, "model_version": model_version,
        "model_name": model_name, "request_id": observation.request_id, "image_name": observation.name,
        "prediction": observation.prediction, "confidence": observation.confidence,
        "top_k": json.dumps([[label, round(float(probability), 6)] for label, probability in observation.top[:TOP_K]]),
        "threshold": observation.threshold, "unknown": observation.unknown, "level": observation.level,
        "image_sha256": facts.sha256 if facts else None, "image_bytes": facts.size if facts else None,
        "image_width": facts.width if facts else None, "image_height": facts.height if facts else None,
        "image_format": facts.image_format if facts else None,
        "image_path": str(image_path) if image_path else None,
        "embedding": embedding_blob(features), "embedding_dtype": None if features is None else EMBEDDING_DTYPE,
        "embedding_dim": None if features is None else int(np.asarray(features).shape[-1]),
    }


def read_embedding(row: Any) -> np.ndarray | None:
    """A stored row's embedding as float32, or None."""
    if row.embedding is None:
        return None
    return np.frombuffer(row.embedding, dtype=np.dtype(row.embedding_dtype).newbyteorder("<")).astype(np.float32)
