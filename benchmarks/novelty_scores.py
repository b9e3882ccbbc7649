"""Candidate novelty scores compared on the monitor benchmark's photos (``novelty_scores`` in its JSON).

Each candidate scores an image from its pooled features (higher is more
novel) and is calibrated as the monitor's rule is: novel beyond the 99th
percentile of the run's val split's scores. Reported per candidate: AUROC of
the unseen class against known photos, the share of unseen-class photos
flagged (recall) and of known photos flagged. Feature-space scores: nearest
and 10th-nearest training neighbour on unit features (the 10th: Sun et al.
2022), nearest val neighbour (leave-one-out for val itself),
class-conditional and relative Mahalanobis with a Ledoit-Wolf covariance
(Lee et al. 2018, Ren et al. 2021). Confidence scores from the model's
linear head: maximum softmax (with the bundle's temperature), energy, the
maximum logit. Combinations: the mean and the larger of a feature score's
and a confidence score's val percentiles.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp, softmax

Score = Callable[[np.ndarray], np.ndarray]


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def neighbour(reference: np.ndarray, k: int) -> Score:
    """Cosine distance to the k-th nearest reference row; a row equal to a reference one skips itself."""
    base = unit(reference)

    def score(rows: np.ndarray) -> np.ndarray:
        similarity = unit(rows) @ base.T
        similarity[similarity > 1 - 1e-6] = -np.inf  # the row itself (val scored against val)
        return 1 - np.sort(similarity, axis=1)[:, -k]
    return score


def mahalanobis(train: np.ndarray, labels: np.ndarray, relative: bool) -> Score:
    """Smallest class-conditional Mahalanobis distance (tied Ledoit-Wolf covariance), less the class-free one if relative."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([train[labels == label].mean(axis=0) for label in np.unique(labels)])
    precision = LedoitWolf().fit(train - means[np.searchsorted(np.unique(labels), labels)]).precision_
    centre = train.mean(axis=0)
    background = LedoitWolf().fit(train - centre).precision_

    def distance(rows: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", rows - mean, matrix, rows - mean)

    def score(rows: np.ndarray) -> np.ndarray:
        by_class = np.stack([distance(rows, mean, precision) for mean in means], axis=1)
        return (by_class - distance(rows, centre, background)[:, None] if relative else by_class).min(axis=1)
    return score


def candidates(train: np.ndarray, labels: np.ndarray, val: np.ndarray, head: tuple[np.ndarray, np.ndarray],
               temperature: float) -> dict[str, Score]:
    weight, bias = head

    def logits(rows: np.ndarray) -> np.ndarray:
        return rows @ weight.T + bias
    singles: dict[str, Score] = {
        "nearest_training_cosine": neighbour(train, 1), "knn10_training_cosine": neighbour(train, 10),
        "nearest_val_cosine": neighbour(val, 1), "mahalanobis": mahalanobis(train, labels, False),
        "relative_mahalanobis": mahalanobis(train, labels, True),
        "max_softmax": lambda rows: 1 - softmax(logits(rows) / temperature, axis=1).max(axis=1),
        "energy": lambda rows: -temperature * logsumexp(logits(rows) / temperature, axis=1),
        "max_logit": lambda rows: -logits(rows).max(axis=1)}
    return {**singles, **{f"{how}_percentile(nearest_training_cosine,{confidence})":
                          combined(singles["nearest_training_cosine"], singles[confidence], val, how)
                          for how, confidence in (("mean", "max_softmax"), ("max", "max_logit"))}}


def combined(first: Score, second: Score, val: np.ndarray, how: str) -> Score:
    """The mean or the larger of two scores' percentiles among val's scores."""
    references = [np.sort(first(val)), np.sort(second(val))]

    def score(rows: np.ndarray) -> np.ndarray:
        ranks = [np.searchsorted(reference, part(rows), side="right") / len(reference)
                 for reference, part in zip(references, (first, second))]
        return np.mean(ranks, axis=0) if how == "mean" else np.maximum(*ranks)
    return score


def compare(scores: dict[str, Score], val: np.ndarray, known: np.ndarray, novel: np.ndarray) -> dict:
    """Per candidate: AUROC novel against known, recall and known flagged at val's 99th percentile."""
    from sklearn.metrics import roc_auc_score

    results = {}
    for name, score in scores.items():
        threshold = float(np.quantile(score(val), 0.99))
        on_known, on_novel = score(known), score(novel)
        truth = np.r_[np.zeros(len(on_known)), np.ones(len(on_novel))]
        results[name] = {"auroc": float(roc_auc_score(truth, np.r_[on_known, on_novel])),
                         "recall": float(np.mean(on_novel > threshold)),
                         "known_flagged": float(np.mean(on_known > threshold))}
    return results
