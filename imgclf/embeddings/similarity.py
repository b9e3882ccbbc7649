"""How alike two images are: the cosine of their embeddings, and what a score means.

Pooled features of a convolutional backbone are non-negative (they follow a
ReLU), so their cosine already lies in [0, 1]; for other backbones negative
cosines (opposite features) are reported as 0. The verdict thresholds were
measured with tf_efficientnet_lite0 on the flowers photos
(benchmarks/transfer.py, "similarity" section): an image against its
mirror image, a re-encoded or resized copy, another photo of the same
class, and a photo of another class.
"""

from __future__ import annotations

import numpy as np

# (lowest score, verdict), highest first
VERDICTS = (
    (0.90, "near-duplicate: the same picture, perhaps flipped, resized or re-encoded"),
    (0.75, "very similar: likely the same subject"),
    (0.55, "similar"),
    (0.0, "different"),
)
NEAR_DUPLICATE = VERDICTS[0][0]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32: cosine becomes a dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings, clipped to [0, 1]."""
    return float(np.clip(normalise(a) @ normalise(b), 0.0, 1.0))


def verdict(score: float) -> str:
    """A plain-words reading of a similarity score."""
    return next(text for threshold, text in VERDICTS if score >= threshold)
