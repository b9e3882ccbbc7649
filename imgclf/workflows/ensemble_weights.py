"""An ensemble's member weights: fitted on val where that measurably beats averaging, else equal.

Weights fitted on the validation split fit the very images they are then
scored on. With a few hundred images the fit mostly finds those images'
noise: on flowers (736 val images) the four-member plan's weights fitted on
val scored 95.9% there, but 95.2% on the images each fold's weights had not
seen, where equal weights scored 95.1% (benchmarks/results/plans.json, the
ensemble's ``val_accuracy_fitted_weights``, ``val_accuracy_cross_fitted``
and ``val_accuracy``). So ``auto`` keeps equal weights unless weights fitted
on four fifths of val, scored on the fifth left out and summed over the
five folds, give a lower log loss than equal weights do on all of val (each
ensemble's ``fitted_cross_fitted_val_log_loss`` and ``equal_val_log_loss``
there): a larger validation split, or members of very different quality,
earn fitted weights; a small one does not.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.model_selection import KFold, StratifiedKFold

WEIGHTINGS = ("auto", "fit", "equal")
CROSS_FIT_FOLDS = 5


def _true_class(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """(M, N): each member's probability of each image's true class, kept away from zero for the logarithm."""
    return np.stack([np.clip(p[np.arange(len(labels)), labels].astype(np.float64), 1e-12, 1.0)
                     for p in probabilities])


def fit_weights(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the NLL of ``sum_m w_m p_m`` (members' (N, C) probabilities)."""
    true = _true_class(probabilities, labels)

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights = softmax(theta)
        mixed = weights @ true  # (N,)
        loss = -np.mean(np.log(mixed))
        d_weights = -np.mean(true / mixed, axis=1)  # d loss / d w_m
        return float(loss), weights * (d_weights - weights @ d_weights)  # through the softmax

    result = minimize(loss_and_gradient, np.zeros(len(probabilities)), jac=True, method="L-BFGS-B")
    return softmax(result.x)


def mixture_log_loss(weights: np.ndarray, probabilities: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the weighted mean of the members' probabilities."""
    return float(-np.mean(np.log(weights @ _true_class(probabilities, labels))))


def cross_fitted_probabilities(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray | None:
    """The fitted mixture's probabilities for each val image from weights fitted on the other folds (stratified
    where any class has an image per fold); None when val is too small to hold out a fold."""
    if len(labels) < 2 * CROSS_FIT_FOLDS:
        return None
    _, counts = np.unique(labels, return_counts=True)
    splitter = (StratifiedKFold(CROSS_FIT_FOLDS, shuffle=True, random_state=0) if counts.max() >= CROSS_FIT_FOLDS
                else KFold(CROSS_FIT_FOLDS, shuffle=True, random_state=0))
    mixed = np.zeros_like(probabilities[0], dtype=np.float64)
    with warnings.catch_warnings():  # a class with fewer images than folds: sklearn warns, the folds still hold
        warnings.simplefilter("ignore", UserWarning)
        folds = list(splitter.split(labels, labels))
    for fit_rows, score_rows in folds:
        weights = fit_weights([p[fit_rows] for p in probabilities], labels[fit_rows])
        mixed[score_rows] = sum(weight * p[score_rows] for weight, p in zip(weights, probabilities))
    return mixed


@dataclass(frozen=True)
class Weighing:
    """What ``auto`` decides from: the weights fitted on all of val, the out-of-fold mixture, the two log losses."""

    fitted: np.ndarray
    cross_fitted: np.ndarray | None  # (N, C) from weights fitted on the other folds; None: val too small
    equal_log_loss: float
    cross_fitted_log_loss: float | None

    @property
    def fit_pays(self) -> bool:
        return self.cross_fitted_log_loss is not None and self.cross_fitted_log_loss < self.equal_log_loss

    def evidence(self) -> dict[str, Any]:
        """ensemble.json's record of the choice."""
        loss = self.cross_fitted_log_loss
        return {"weighting": "fit" if self.fit_pays else "equal", "equal_val_log_loss": round(self.equal_log_loss, 6),
                "fitted_cross_fitted_val_log_loss": None if loss is None else round(loss, 6)}


def weigh(probabilities: list[np.ndarray], labels: np.ndarray) -> Weighing:
    """Fit the weights on all of val and cross-fitted, and score both against equal weights."""
    equal = np.full(len(probabilities), 1 / len(probabilities))
    cross_fitted = cross_fitted_probabilities(probabilities, labels)
    return Weighing(fit_weights(probabilities, labels), cross_fitted, mixture_log_loss(equal, probabilities, labels),
                    None if cross_fitted is None else mixture_log_loss(np.ones(1), [cross_fitted], labels))


def choose_weights(probabilities: list[np.ndarray], labels: np.ndarray, weighting: str
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """The members' weights for ``weighting`` (auto, fit or equal) and what decided them, for ensemble.json."""
    equal = np.full(len(probabilities), 1 / len(probabilities))
    if weighting == "equal":
        return equal, {"weighting": "equal"}
    if weighting == "fit":
        return fit_weights(probabilities, labels), {"weighting": "fit"}
    weighing = weigh(probabilities, labels)
    return (weighing.fitted if weighing.fit_pays else equal), weighing.evidence()


def explain(evidence: dict[str, Any]) -> str:
    """The weighting chosen, and where ``auto`` chose it, what decided it."""
    chosen = evidence["weighting"]
    if "equal_val_log_loss" not in evidence:
        return chosen
    if evidence["fitted_cross_fitted_val_log_loss"] is None:
        return f"{chosen} (val is too small to hold out a fifth and check fitted weights on it)"
    beat = "beat" if chosen == "fit" else "did not beat"
    return f"{chosen} (fitted on val, they {beat} equal weights on the val images they were not fitted on)"
