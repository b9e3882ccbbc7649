"""Outliers: images far from the rest of their class, in a pretrained backbone's embedding space.

Such an image is often in the wrong class folder, or not a photo of the
thing at all (a shop sign among roses, another dataset's image). Its score
multiplies two pieces of evidence:

- how far it is from its class: its cosine distance to the class's mean
  embedding over the median of that distance in the class, so a class whose
  photos vary a lot (bouquets, fields, single blooms) is not held to the
  spread of a tight one;
- how foreign its neighbourhood is: one plus the share of its
  :data:`NEIGHBOURS` nearest images in the whole dataset that carry another
  label.

Both are needed. Distance to the nearest images of the same class alone
(the usual k-nearest-neighbour score) misses junk that came in a batch: a
few dozen images pasted from another dataset sit close to one another, so
each has near neighbours. On the flowers set with CIFAR-10 images pasted
into its class folders (3% of the training split, ``benchmarks/label_noise.py``)
that score found a quarter of them where this one finds most, at the same
share of the photos flagged; the figures and the threshold's choice are in
``benchmarks/results/label_noise.json`` (``planted_quality``). Each outlier
also gets the class most of its nearest images have: the likely right one
when the image is in the wrong folder.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from imgclf.embeddings.similarity import normalise

NEIGHBOURS = 10  # nearest images in the whole dataset whose labels are compared with the image's
OUTLIER_ABOVE = 3.0  # the score above which an image is listed
SMALLEST_CLASS = 5  # a class with fewer images has no spread to compare with: its images get no score


@dataclass(frozen=True)
class Outlier:
    """One image far from its class: its position, its score, the class most of its nearest images have."""

    index: int
    score: float
    nearest_class: str


def class_distances(labels: list[str], unit: np.ndarray) -> np.ndarray:
    """Each image's cosine distance to its class's mean over the class's median such distance (NaN: class too small)."""
    ratios = np.full(len(labels), np.nan)
    by_class: dict[str, list[int]] = defaultdict(list)
    for position, label in enumerate(labels):
        by_class[label].append(position)
    for members in by_class.values():
        if len(members) < SMALLEST_CLASS:
            continue
        rows = np.asarray(members)
        centre = normalise(unit[rows].mean(axis=0, keepdims=True))[0]
        distances = 1.0 - unit[rows] @ centre
        ratios[rows] = distances / max(float(np.median(distances)), 1e-6)
    return ratios


def neighbour_labels(labels: list[str], unit: np.ndarray) -> list[list[str]]:
    """The labels of each image's :data:`NEIGHBOURS` nearest other images (cosine, exact search)."""
    import faiss

    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    _, neighbours = index.search(unit, min(len(labels), NEIGHBOURS + 1))
    return [[labels[other] for other in row if other >= 0 and other != position][:NEIGHBOURS]
            for position, row in enumerate(neighbours)]


def find_outliers(labels: list[str], vectors: np.ndarray, threshold: float = OUTLIER_ABOVE) -> list[Outlier]:
    """The images whose score (distance from the class times the foreignness of the neighbourhood) is above
    ``threshold``, highest first."""
    if len(labels) < 2:
        return []
    unit = normalise(vectors.astype(np.float32))
    near = neighbour_labels(labels, unit)
    foreign = np.array([sum(other != label for other in others) / max(1, len(others))
                        for label, others in zip(labels, near)])
    scores = class_distances(labels, unit) * (1.0 + foreign)
    flagged = np.flatnonzero(np.nan_to_num(scores, nan=0.0) > threshold)
    found = [Outlier(int(position), float(scores[position]),
                     Counter(near[position]).most_common(1)[0][0] if near[position] else labels[position])
             for position in flagged]
    return sorted(found, key=lambda outlier: -outlier.score)
