"""A binary model's decision on the split evaluated: figures at its threshold, and what other thresholds would give.

The threshold was chosen on validation (:mod:`imgclf.deploy.decision`); here
it is measured on the images evaluated (precision, recall, F1, false
positive rate, the 2x2 confusion matrix), next to the thresholds that the
usual goals would pick on these same images, so a user can see what moving
it would buy. Counts come from scikit-learn's confusion matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from imgclf.thresholds import choose_threshold, parse_goal

ALTERNATIVE_GOALS = ("f1", "precision=0.9", "precision=0.95", "precision=0.99",
                     "recall=0.9", "recall=0.95", "recall=0.99", "0.5")


def binary_decision_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str], positive: int,
                            threshold: float, goal: str) -> dict[str, Any]:
    """The decision at ``threshold`` on P(``classes[positive]``) for integer ``labels``, and the alternatives."""
    scores = np.asarray(probabilities, dtype=np.float64)[:, positive]
    truth = np.asarray(labels) == positive
    alternatives = []
    for text in ALTERNATIVE_GOALS:
        choice = choose_threshold(scores, truth, parse_goal(text))
        alternatives.append({"goal": text, "met": choice.met, **figures_at(scores, truth, choice.threshold)})
    return {"positive": classes[positive], "negative": classes[1 - positive], "goal": goal or "0.5 (argmax)",
            **figures_at(scores, truth, threshold), "alternatives": alternatives}


def figures_at(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1, false positive rate and the counts when ``scores >= threshold`` says positive."""
    said = scores >= threshold
    (true_negatives, false_positives), (false_negatives, true_positives) = confusion_matrix(
        truth, said, labels=[False, True])
    precision = true_positives / max(true_positives + false_positives, 1)
    recall = true_positives / max(true_positives + false_negatives, 1)
    return {"threshold": float(threshold), "precision": float(precision), "recall": float(recall),
            "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
            "false_positive_rate": float(false_positives / max(false_positives + true_negatives, 1)),
            "true_positives": int(true_positives), "false_positives": int(false_positives),
            "false_negatives": int(false_negatives), "true_negatives": int(true_negatives)}

