"""The probe stage done in seconds: fit the head on cached embeddings with scikit-learn.

A probe trains only the classifier on a frozen backbone, so the backbone's
output for an image never changes: computing it every epoch (with gradient
descent on top) wastes most of the probe's time and fits the head worse
than a convex solver does. Here the backbone embeds every training and
validation image once (no augmentation; ``imgclf.embeddings`` caches them
per image on disk), and a multinomial logistic regression is fitted with its
regularisation chosen on the validation split. Its coefficients become the
weights of the model's linear head, so the result is an ordinary model and
bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

REGULARISATION_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)  # sklearn's C: inverse L2 strength
DEFAULT_C = 0.3  # without a validation split to choose on


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


def fit_linear_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
                    classes: int, balanced: bool = False) -> ProbeFit:
    """Multinomial logistic regression on standardised features, C chosen on validation accuracy.

    The standardisation is folded into the returned weights, so they apply
    to raw features exactly as the head will see them.
    """
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    centre = train_x.mean(axis=0)
    scale = train_x.std(axis=0) + 1e-6
    standard = (train_x - centre) / scale
    grid = REGULARISATION_GRID if val_x is not None and len(val_x) else (DEFAULT_C,)
    best: tuple[float, float, object] | None = None
    for regularisation in grid:
        solver = LogisticRegression(C=regularisation, max_iter=2000, class_weight="balanced" if balanced else None)
        solver.fit(standard, train_y)
        score = solver.score((val_x - centre) / scale, val_y) if len(grid) > 1 else solver.score(standard, train_y)
        if best is None or score > best[0]:
            best = (score, regularisation, solver)
    _, regularisation, solver = best  # type: ignore[misc]
    present = solver.classes_  # type: ignore[attr-defined]
    if len(present) != classes:
        # Training refuses such data (imgclf.data.splits.require_training_images): any made-up
        # logit for an unseen class would be paid in every later loss (label smoothing).
        raise ValueError(f"the probe saw {len(present)} of {classes} classes in training; every class needs images")
    fitted = solver.coef_ / scale  # type: ignore[attr-defined]
    intercept = solver.intercept_ - fitted @ centre  # type: ignore[attr-defined]
    if classes == 2:  # sklearn gives one row for two classes: the logit of the second
        weight, bias = np.stack([-fitted[0], fitted[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    else:
        weight, bias = fitted, intercept
    val_accuracy = None
    if val_x is not None and len(val_x):
        val_accuracy = float(np.mean((val_x @ weight.T + bias).argmax(axis=1) == val_y))
    train_accuracy = float(np.mean((train_x @ weight.T + bias).argmax(axis=1) == train_y))
    return ProbeFit(weight, bias, regularisation, train_accuracy, val_accuracy, time.perf_counter() - started)


def load_into_head(head: nn.Linear, fit: ProbeFit) -> None:
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(fit.bias).to(head.bias))

