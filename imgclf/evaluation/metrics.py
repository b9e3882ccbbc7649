"""Classification metrics from labels and predicted probabilities, computed with scikit-learn.

Everything a report shows comes from :func:`compute_metrics`, as plain
JSON-ready Python values: accuracy, top-k accuracy, per-class precision,
recall, F1 and support with macro and weighted averages, the confusion
matrix (counts and row-normalised), one-vs-rest ROC-AUC (plus the ROC and
precision-recall curves for two classes), log loss, expected calibration
error and the most-confused class pairs. Only the calibration error is
written here: scikit-learn has the reliability curve but not the ECE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from imgclf.deploy.calibration import CALIBRATION_BINS, expected_calibration_error, reliability  # noqa: F401 (part of the metrics)

TOP_CONFUSIONS = 10


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                    top_k: tuple[int, ...] = (3, 5), predicted: np.ndarray | None = None,
                    positive: int = 1) -> dict[str, Any]:
    """Metrics of single-label predictions: ``labels`` (N,) class indices, ``probabilities`` (N, C).

    ``predicted`` is the class each image was called (the classifier's
    decision: a binary model's threshold); by default the most probable.
    ``positive`` is the class whose curves a two-class model gets.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count = len(classes)
    indices = list(range(count))
    predicted = probabilities.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=np.int64)
    report = skm.classification_report(labels, predicted, labels=indices, target_names=classes, output_dict=True,
                                       zero_division=0)
    confusion = skm.confusion_matrix(labels, predicted, labels=indices)
    normalised = row_normalised(confusion)
    result: dict[str, Any] = {
        "images": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "per_class": {name: {"precision": report[name]["precision"], "recall": report[name]["recall"],
                             "f1": report[name]["f1-score"], "support": int(report[name]["support"])}
                      for name in classes},
        "macro_avg": _average(report["macro avg"]),
        "weighted_avg": _average(report["weighted avg"]),
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_normalised": normalised.round(6).tolist(),
        "log_loss": compute_log_loss(labels, probabilities, count),
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
        "most_confused": most_confused(confusion, classes),
    }
    for k in top_k:
        if k < count:
            result[f"top_{k}_accuracy"] = float(skm.top_k_accuracy_score(labels, probabilities, k=k, labels=indices))
    result.update(_roc(labels, probabilities, classes, positive))
    return result


def compute_log_loss(labels: np.ndarray, probabilities: np.ndarray, classes: int) -> float:
    """Mean negative log-likelihood of the true classes (scikit-learn's log loss over all ``classes``)."""
    return float(skm.log_loss(labels, _renormalised(np.asarray(probabilities, dtype=np.float64)),
                              labels=list(range(classes))))


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each true class's row as shares of its images (rows of absent classes stay zero)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(confusion / confusion.sum(axis=1, keepdims=True))


def _renormalised(probabilities: np.ndarray) -> np.ndarray:
    """Clipped away from 0 and summing to 1 exactly (float32 softmax sums are off by ~1e-7)."""
    clipped = np.clip(probabilities, 1e-15, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def _average(row: dict[str, float]) -> dict[str, float]:
    return {"precision": row["precision"], "recall": row["recall"], "f1": row["f1-score"]}


def _roc(labels: np.ndarray, probabilities: np.ndarray, classes: list[str], positive: int) -> dict[str, Any]:
    """ROC-AUC one-vs-rest over the classes present; curves of the ``positive`` class for the two-class case."""
    present = np.unique(labels)
    if len(present) < 2:
        return {"roc_auc_ovr": None}
    if len(classes) == 2:
        scores, truth = probabilities[:, positive], labels == positive
        fpr, tpr, _ = skm.roc_curve(truth, scores)
        precision, recall, _ = skm.precision_recall_curve(truth, scores)
        return {"roc_auc_ovr": float(skm.roc_auc_score(truth, scores)),
                "average_precision": float(skm.average_precision_score(truth, scores)),
                "curves": {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
                           "precision_recall": {"precision": precision.tolist(), "recall": recall.tolist()}}}
    per_class = {}
    for index in present:
        binary = labels == index
        per_class[classes[index]] = float(skm.roc_auc_score(binary, probabilities[:, index]))
    return {"roc_auc_ovr": float(np.mean(list(per_class.values()))), "roc_auc_per_class": per_class}


def most_confused(confusion: np.ndarray, classes: list[str], limit: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: (true, predicted, count), most frequent first."""
    cells = [(int(confusion[t, p]), t, p) for t in range(len(classes)) for p in range(len(classes))
             if t != p and confusion[t, p] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [{"true": classes[t], "predicted": classes[p], "count": count} for count, t, p in cells[:limit]]
