"""Decision thresholds: where a sigmoid or a binary classifier says "yes".

A probability of 0.5 is rarely the right place to decide: a rare positive
class wants a lower bar, a triage queue that must miss nothing wants the bar
where recall is 0.95. The user names a goal (``f1``, ``precision=0.95``,
``recall=0.95`` or a fixed number) and :func:`choose_threshold` finds the
threshold that meets it on the validation split, from scikit-learn's
precision-recall curve. Binary models keep one threshold, multi-label
models one per label; both are stored in the bundle's ``model.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve

from imgclf.errors import ImgclfError

DEFAULT_GOAL = "f1"
GOAL_HELP = "f1 (the default), precision=P, recall=R (P, R in 0..1), or a fixed threshold in 0..1"


@dataclass(frozen=True)
class ThresholdGoal:
    """What a threshold is chosen for: ``kind`` is ``f1``, ``precision``, ``recall`` or ``fixed``."""

    kind: str
    value: float | None = None

    @property
    def target(self) -> float:
        """The number of a goal that has one (every kind but ``f1``)."""
        assert self.value is not None, f"a {self.kind} goal without its number"
        return self.value

    def __str__(self) -> str:
        if self.kind == "f1":
            return "f1"
        if self.kind == "fixed":
            return f"{self.value:g}"
        return f"{self.kind}={self.value:g}"


def parse_goal(text: str, option: str = "--threshold-for") -> ThresholdGoal:
    """``f1`` | ``precision=0.95`` | ``recall=0.9`` | ``0.3``; an error naming ``option`` otherwise."""
    spelled = text.strip().lower()
    if spelled == "f1":
        return ThresholdGoal("f1")
    kind, _, number = spelled.partition("=")
    if not number:
        kind, number = "fixed", spelled
    if kind not in ("precision", "recall", "fixed"):
        raise ImgclfError(f"{option} {text!r} is not a threshold goal; use {GOAL_HELP}")
    try:
        value = float(number)
    except ValueError:
        raise ImgclfError(f"{option} {text!r} is not a threshold goal; use {GOAL_HELP}") from None
    if not 0.0 <= value <= 1.0:
        raise ImgclfError(f"{option} {text!r}: {value:g} is outside 0..1; use {GOAL_HELP}")
    return ThresholdGoal(kind, value)


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold and what it gives on the data it was chosen on."""

    threshold: float
    precision: float
    recall: float
    f1: float
    met: bool  # False when no threshold reaches the goal's precision or recall (the closest one is kept)


def choose_threshold(scores: np.ndarray, truth: np.ndarray, goal: ThresholdGoal) -> ThresholdChoice:
    """The threshold on ``scores`` (probabilities of the positive) that best meets ``goal`` for ``truth`` (0/1).

    ``f1``: the threshold of the highest F1. ``precision=P``: the lowest
    threshold whose precision is at least P (so recall is as high as it can
    be). ``recall=R``: the highest threshold whose recall is at least R (so
    precision is as high as it can be). With no positives or no negatives
    the curve says nothing and 0.5 is kept.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    if goal.kind == "fixed":
        return _choice_at(scores, truth, goal.target, met=True)
    if truth.all() or not truth.any():
        return _choice_at(scores, truth, 0.5, met=False)
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    if goal.kind == "f1":
        best = int(np.argmax(f1))
        return _choice_at(scores, truth, _in_the_gap(scores, float(thresholds[best])), met=True)
    target = goal.target
    if goal.kind == "precision":
        meets = np.flatnonzero(precision >= target)
        met = meets.size > 0
        best = int(meets[0]) if met else int(np.argmax(precision))
    else:
        meets = np.flatnonzero(recall >= target)
        met = meets.size > 0
        best = int(meets[-1]) if met else int(np.argmax(recall))
    return _choice_at(scores, truth, _in_the_gap(scores, float(thresholds[best])), met=met)


def _in_the_gap(scores: np.ndarray, threshold: float) -> float:
    """Midway between ``threshold`` (a score) and the next lower score: the same decisions on these scores.

    The curve's threshold is the lowest score said yes, so a new image scored a
    hair below it would be a no; the middle of the gap to the next score
    down is the boundary these scores support, and it generalises better
    (a small validation split otherwise puts the boundary on its edge).
    """
    below = scores[scores < threshold]
    return float((threshold + below.max()) / 2) if below.size else threshold


def _choice_at(scores: np.ndarray, truth: np.ndarray, threshold: float, met: bool) -> ThresholdChoice:
    said = scores >= threshold
    true_positives = float(np.sum(said & truth))
    precision = true_positives / max(float(said.sum()), 1.0)
    recall = true_positives / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return ThresholdChoice(threshold=threshold, precision=precision, recall=recall, f1=f1, met=met)


def choose_label_thresholds(probabilities: np.ndarray, truth: np.ndarray, classes: list[str],
                            goal: ThresholdGoal) -> dict[str, ThresholdChoice]:
    """A multi-label model's decisions: :func:`choose_threshold` on each label's column of (N, K) ``probabilities``.

    Labels are independent yes/no questions, so each gets the threshold that
    meets the goal for its own column of ``truth`` (0/1, (N, K)); a rare
    label usually wants a bar well below 0.5.
    """
    truth = np.asarray(truth)
    return {name: choose_threshold(probabilities[:, index], truth[:, index], goal)
            for index, name in enumerate(classes)}


def positive_class(classes: list[str], positive: str | None, multilabel: bool = False) -> str | None:
    """The positive class of a binary decision: ``positive`` checked against ``classes``, else the second class.

    Only single-label data with exactly two classes gets one. With more
    classes ``--positive`` is refused rather than read as "this class
    against the rest": a model trained on five classes splits its
    probability five ways, so the rest would still need its own decision
    rule; relabelling the data as two classes trains what is meant.
    """
    if positive is not None and multilabel:
        raise ImgclfError(f"--positive {positive}: multi-label data has a threshold per label, not a positive class; "
                          "drop --positive")
    if multilabel or len(classes) != 2:
        if positive is not None:
            raise ImgclfError(f"--positive {positive}: a binary decision needs exactly 2 classes, found "
                              f"{len(classes)} ({', '.join(classes[:10])}); relabel the others as one class "
                              "(e.g. a CSV manifest with labels roses / other) or drop --positive")
        return None
    if positive is None:
        return classes[1]
    if positive not in classes:
        raise ImgclfError(f"--positive {positive}: no such class; the classes are {', '.join(classes)}")
    return positive
