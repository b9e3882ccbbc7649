"""Outliers: images far from every other image of their class, in a pretrained backbone's embedding space.

Such an image is often in the wrong class folder, or not a photo of the
thing at all (a logo, a screenshot, another dataset's image). Its score is
its mean cosine distance to its :data:`NEIGHBOURS` nearest neighbours of
the same class over that distance's median in the class, so a class whose
photos vary a lot (bouquets, fields, single blooms) is not held to the
spread of a tight one. The threshold was chosen on the flowers set with
CIFAR-10 images pasted into its class folders (``benchmarks/label_noise.py``,
``benchmarks/results/label_noise.json``): few clean photos flagged, most
pasted ones found. Each outlier also gets the class most of its nearest
neighbours in the whole dataset have: the likely right one when the image
is in the wrong folder.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from imgclf.embeddings.similarity import normalise

NEIGHBOURS = 5  # same-class neighbours an image's distance is averaged over
OUTLIER_ABOVE = 1.6  # distance to those neighbours over the class's median distance
SMALLEST_CLASS = NEIGHBOURS + 3  # a class with fewer images has no spread to compare with


@dataclass(frozen=True)
class Outlier:
    """One image far from its class: its position, its score, the class of most of its nearest neighbours."""

    index: int
    score: float
    nearest_class: str


def outlier_scores(labels: list[str], vectors: np.ndarray) -> np.ndarray:
    """Each image's distance to its class's nearest images over the class's median such distance (NaN: class too small)."""
    import faiss

    unit = normalise(vectors.astype(np.float32))
    scores = np.full(len(labels), np.nan)
    by_class: dict[str, list[int]] = defaultdict(list)
    for position, label in enumerate(labels):
        by_class[label].append(position)
    for members in by_class.values():
        if len(members) < SMALLEST_CLASS:
            continue
        rows = np.asarray(members)
        index = faiss.IndexFlatIP(unit.shape[1])
        index.add(unit[rows])
        similarities, _ = index.search(unit[rows], NEIGHBOURS + 1)
        distances = 1.0 - similarities[:, 1:].mean(axis=1)  # the first neighbour is the image itself
        scores[rows] = distances / max(float(np.median(distances)), 1e-6)
    return scores


def find_outliers(labels: list[str], vectors: np.ndarray, threshold: float = OUTLIER_ABOVE) -> list[Outlier]:
    """The images whose :func:`outlier_scores` is above ``threshold``, farthest first."""
    import faiss

    scores = outlier_scores(labels, vectors)
    flagged = np.flatnonzero(np.nan_to_num(scores, nan=0.0) > threshold)
    if not len(flagged):
        return []
    unit = normalise(vectors.astype(np.float32))
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    _, neighbours = index.search(unit[flagged], min(len(labels), NEIGHBOURS + 1))
    found = []
    for row, position in enumerate(flagged):
        near = [labels[other] for other in neighbours[row] if other >= 0 and other != position]
        nearest = Counter(near).most_common(1)[0][0] if near else labels[position]
        found.append(Outlier(int(position), float(scores[position]), nearest))
    return sorted(found, key=lambda outlier: -outlier.score)
