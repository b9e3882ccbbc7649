"""Likely label errors: images whose given label a model confidently contradicts.

Confident learning (Northcutt et al., 2021) in its simplest sound form:
each class gets a threshold, the model's mean probability for that class on
images labelled with it (its self-confidence). An image is flagged when the
model is at least that confident in another class *and* less confident than
usual in the given one. Ranked by the gap between the two probabilities.
The probabilities must come from images the model did not train on, or it
will have memorised the very labels it should question.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def class_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per class: the mean predicted probability of that class over the images labelled with it (1 if none)."""
    thresholds = np.ones(probabilities.shape[1])
    for index in range(probabilities.shape[1]):
        members = labels == index
        if members.any():
            thresholds[index] = probabilities[members, index].mean()
    return thresholds


def find_label_issues(paths: list[str], labels: np.ndarray, probabilities: np.ndarray,
                      classes: list[str]) -> list[dict[str, Any]]:
    """Flagged images, strongest evidence (probability of the suggested class minus the given one's) first."""
    thresholds = class_thresholds(labels, probabilities)
    above = probabilities >= thresholds[None, :]
    above[np.arange(len(labels)), labels] = False
    candidates = np.where(above, probabilities, -1.0)
    suggested = candidates.argmax(axis=1)
    given_probability = probabilities[np.arange(len(labels)), labels]
    flagged = (candidates.max(axis=1) >= 0) & (given_probability < thresholds[labels])
    issues = [{"path": paths[i], "given": classes[labels[i]], "predicted": classes[suggested[i]],
               "given_probability": round(float(given_probability[i]), 6),
               "predicted_probability": round(float(probabilities[i, suggested[i]]), 6),
               "evidence": round(float(probabilities[i, suggested[i]] - given_probability[i]), 6)}
              for i in np.flatnonzero(flagged)]
    issues.sort(key=lambda issue: -issue["evidence"])
    return issues
