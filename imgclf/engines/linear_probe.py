"""The probe stage done in seconds: fit the head on cached embeddings with scikit-learn.

A probe trains only the classifier on a frozen backbone, so the backbone's
output for an image never changes: computing it every epoch (with gradient
descent on top) wastes most of the probe's time and fits the head worse
than a convex solver does. Here the backbone embeds every training and
validation image once (``imgclf.embeddings`` caches them per image and
view on disk; with TTA the mirror images are training rows too), and a
multinomial logistic regression is fitted with its regularisation chosen by
cross-validation on the training split: the validation split stays a fair
judge of the result. Multi-label data gets one-vs-rest (a binary logistic
regression per label), its regularisation chosen on validation mAP. The
coefficients become the weights of the model's linear head, so the result
is an ordinary model and bundle.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# sklearn's C (inverse L2 strength) on standardised features. Flowers' folds chose 0.003-0.03 for one or
# two EfficientNet-Lite trunks (a few thousand images, 1,280-2,560 features), so the grid centres there.
REGULARISATION_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
DEFAULT_C = 0.03  # with too few images per class to cross-validate
# one-vs-rest heads (multi-label), chosen on validation mAP: each label is a small binary problem, weaker priors
LABEL_REGULARISATION_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_LABEL_C = 0.3  # without a validation split to choose on
CV_FOLDS = 3


def supports_linear_probe(head: nn.Module) -> bool:
    """A plain ``nn.Linear`` head with a bias can take the fitted coefficients exactly."""
    return type(head) is nn.Linear and head.bias is not None


@dataclass
class ProbeFit:
    weight: np.ndarray  # (classes, features), for the model's head
    bias: np.ndarray
    regularisation: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


def fit_linear_head(train_x: np.ndarray | Sequence[np.ndarray], train_y: np.ndarray, val_x: np.ndarray | None,
                    val_y: np.ndarray | None, classes: int, balanced: bool = False, seed: int = 0,
                    regularisation: float | None = None) -> ProbeFit:
    """Multinomial logistic regression on standardised features, C chosen by cross-validation on train.

    ``train_x`` is (N, D), or a sequence of (N, D) arrays: views of the same
    N images (e.g. plain and mirrored), all used as training rows; the folds
    keep an image's views together so none is judged on its own mirror image.
    The standardisation is folded into the returned weights, so they apply
    to raw features exactly as the head will see them. An explicit
    ``regularisation`` (``--probe-c``, e.g. drawn by ``imgclf tune``) skips
    the cross-validation.
    """
    started = time.perf_counter()
    views = [train_x] if isinstance(train_x, np.ndarray) and train_x.ndim == 2 else list(train_x)
    if regularisation is None:
        regularisation = choose_regularisation(views, train_y, balanced, seed)
    solver, centre, scale = _fit(views, train_y, regularisation, balanced)
    present = solver.classes_
    if len(present) != classes:
        # Training refuses such data (imgclf.data.splits.require_training_images): any made-up
        # logit for an unseen class would be paid in every later loss (label smoothing).
        raise ValueError(f"the probe saw {len(present)} of {classes} classes in training; every class needs images")
    fitted = solver.coef_ / scale
    intercept = solver.intercept_ - fitted @ centre
    if classes == 2:  # sklearn gives one row for two classes: the logit of the second
        weight, bias = np.stack([-fitted[0], fitted[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    else:
        weight, bias = fitted, intercept
    val_accuracy = None
    if val_x is not None and len(val_x):
        val_accuracy = float(np.mean((val_x @ weight.T + bias).argmax(axis=1) == val_y))
    train_accuracy = float(np.mean((views[0] @ weight.T + bias).argmax(axis=1) == train_y))
    return ProbeFit(weight, bias, regularisation, train_accuracy, val_accuracy, time.perf_counter() - started)


def fit_label_heads(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
                    balanced: bool = False, regularisation: float | None = None) -> ProbeFit:
    """Multi-label: one-vs-rest logistic regression on (N, K) 0/1 targets, C chosen on validation mAP.

    Each label is its own yes/no question, so each row of the head is one
    binary regression's coefficients: sigmoid(head) is its probability (an
    explicit ``regularisation`` replaces the grid). A
    label on every (or no) training image has nothing to separate; its row
    is zero and its bias the smoothed log-odds of the label in training.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    started = time.perf_counter()
    train_y = np.asarray(train_y, dtype=np.int64)
    centre = train_x.mean(axis=0)
    scale = train_x.std(axis=0) + 1e-6
    standard = (train_x - centre) / scale
    has_val = val_x is not None and val_y is not None and len(val_x) > 0
    grid = (regularisation,) if regularisation is not None else \
        LABEL_REGULARISATION_GRID if has_val else (DEFAULT_LABEL_C,)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    for candidate in grid:
        solver = OneVsRestClassifier(LogisticRegression(C=candidate, max_iter=2000,
                                                        class_weight="balanced" if balanced else None))
        with warnings.catch_warnings():  # a label on every image is handled by _label_rows, not worth a warning
            warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
            solver.fit(standard, train_y)
        weight, bias = _label_rows(solver, train_y)
        weight, bias = weight / scale, bias - (weight / scale) @ centre
        score = _mean_average_precision(val_x @ weight.T + bias, val_y) if has_val else 0.0  # type: ignore[arg-type]  # has_val: both are given
        if best is None or score > best[0]:
            best = (score, candidate, weight, bias)
    _, chosen, weight, bias = best  # type: ignore[misc]  # the grid is never empty

    def subset_accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(((x @ weight.T + bias > 0) == (np.asarray(y) > 0.5)).all(axis=1)))

    val_accuracy = subset_accuracy(val_x, val_y) if has_val else None  # type: ignore[arg-type]  # has_val: both are given
    return ProbeFit(weight, bias, chosen, subset_accuracy(train_x, train_y), val_accuracy,
                    time.perf_counter() - started)


def _mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Macro average precision over the labels present in ``truth`` (AP is undefined for an absent label)."""
    from sklearn.metrics import average_precision_score

    present = np.asarray(truth).any(axis=0)
    if not present.any():
        return 0.0
    return float(average_precision_score(np.asarray(truth)[:, present], scores[:, present], average="macro"))


def _label_rows(solver: object, train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, features) coefficients and (K,) intercepts on standardised features, one row per label."""
    rows, biases = [], []
    for index, estimator in enumerate(solver.estimators_):  # type: ignore[attr-defined]  # set by fit
        if hasattr(estimator, "coef_"):
            rows.append(estimator.coef_[0])
            biases.append(float(estimator.intercept_[0]))
        else:  # sklearn's constant predictor: the label is on every training image, or on none
            positives = float(train_y[:, index].sum())
            rows.append(np.zeros(solver.n_features_in_))  # type: ignore[attr-defined]  # set by fit
            biases.append(float(np.log((positives + 0.5) / (len(train_y) - positives + 0.5))))
    return np.stack(rows), np.array(biases)
def choose_regularisation(views: list[np.ndarray], labels: np.ndarray, balanced: bool = False, seed: int = 0) -> float:
    """The C of the grid with the best mean accuracy over stratified folds of the training images (plain view)."""
    from sklearn.model_selection import StratifiedKFold

    present = np.unique(labels)
    if len(present) < 2 or np.bincount(labels)[present].min() < CV_FOLDS:
        return DEFAULT_C
    folds = list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(views[0], labels))
    scores = []
    for regularisation in REGULARISATION_GRID:
        correct = 0
        for fitted, judged in folds:
            solver, centre, scale = _fit([view[fitted] for view in views], labels[fitted], regularisation, balanced)
            correct += int((solver.predict((views[0][judged] - centre) / scale) == labels[judged]).sum())
        scores.append(correct)
    return REGULARISATION_GRID[int(np.argmax(scores))]  # ties: the stronger regularisation, listed first


def _fit(views: list[np.ndarray], labels: np.ndarray, regularisation: float,
         balanced: bool) -> tuple[Any, np.ndarray, np.ndarray]:  # a scikit-learn solver (untyped)
    """A solver fitted on every view's rows, with the centre and scale it standardised by."""
    from sklearn.linear_model import LogisticRegression

    rows = np.concatenate(views)
    centre = rows.mean(axis=0)
    scale = rows.std(axis=0) + 1e-6
    solver = LogisticRegression(C=regularisation, max_iter=1000, class_weight="balanced" if balanced else None)
    solver.fit((rows - centre) / scale, np.tile(labels, len(views)))
    return solver, centre, scale


def load_into_head(head: nn.Linear, fit: ProbeFit) -> None:
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(fit.bias).to(head.bias))

