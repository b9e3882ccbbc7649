"""Binary decisions: the threshold on P(positive) chosen on validation for the user's goal, kept in the bundle.

The model gives probabilities, whatever the engine; this module only
chooses where to cut them (:func:`imgclf.thresholds.choose_threshold`) and
writes the choice into ``model.json`` (``positive``, ``thresholds``,
``threshold_goal``). :meth:`Classifier.decide <imgclf.deploy.classifier.Classifier.decide>`
applies it, so predict, evaluate, serve, ensembles and exported models'
metadata all say the same label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf.deploy.bundle import update_bundle_info
from imgclf.thresholds import ThresholdChoice, ThresholdGoal, choose_threshold


def choose_decision(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], positive: str,
                    goal: ThresholdGoal) -> ThresholdChoice:
    """The threshold on ``probabilities[:, positive]`` that meets ``goal`` for integer ``labels``."""
    index = classes.index(positive)
    return choose_threshold(np.asarray(probabilities)[:, index], np.asarray(labels) == index, goal)


def store_decision(bundle: Path, positive: str, goal: ThresholdGoal, choice: ThresholdChoice) -> None:
    """Write the positive class, its threshold and the goal it was chosen for into ``model.json`` (atomically)."""
    update_bundle_info(bundle, positive=positive, thresholds={positive: choice.threshold}, threshold_goal=str(goal))
