"""The logistic-regression head: fitted weights act on raw features exactly as the model's head will."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from imgclf.engines.linear_probe import fit_label_heads, fit_linear_head, load_into_head, supports_linear_probe


def clusters(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (classes, 16)) + 10  # far from zero, unscaled: the fit must standardise
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), 16)), labels


def test_fit_separates_clusters_and_loads_into_a_linear_head() -> None:
    train_x, train_y = clusters(4, 30, seed=0)
    val_x, val_y = clusters(4, 10, seed=0)
    fit = fit_linear_head(train_x, train_y, val_x + np.random.default_rng(1).normal(0, 0.1, val_x.shape), val_y, 4)
    assert fit.val_accuracy == 1.0 and fit.train_accuracy == 1.0
    head = nn.Linear(16, 4)
    assert supports_linear_probe(head) and not supports_linear_probe(nn.Linear(16, 4, bias=False))
    load_into_head(head, fit)
    logits = head(torch.from_numpy(val_x).float())
    assert (logits.argmax(dim=1).numpy() == val_y).all()


def test_two_classes() -> None:
    train_x, train_y = clusters(2, 20, seed=2)
    fit = fit_linear_head(train_x, train_y, None, None, 2)
    predicted = (train_x @ fit.weight.T + fit.bias).argmax(axis=1)
    assert (predicted == train_y).all() and fit.val_accuracy is None
    assert np.abs(fit.bias).max() < 100  # real intercepts, no sentinel


def test_a_class_absent_from_training_is_refused_not_given_a_sentinel_bias() -> None:
    train_x, train_y = clusters(2, 20, seed=2)
    train_y = np.where(train_y == 1, 2, 0)  # classes 0 and 2 of three; class 1 never seen
    with pytest.raises(ValueError, match="saw 2 of 3 classes"):
        fit_linear_head(train_x, train_y, None, None, 3)


@pytest.mark.slow
def test_a_given_c_replaces_the_choice_for_both_heads() -> None:
    train_x, train_y = clusters(3, 20, seed=3)
    val_x, val_y = clusters(3, 10, seed=3)
    chosen = fit_linear_head(train_x, train_y, val_x, val_y, 3)
    given = fit_linear_head(train_x, train_y, val_x, val_y, 3, regularisation=5.0)
    assert given.regularisation == 5.0 != chosen.regularisation and not np.allclose(given.weight, chosen.weight)
    labels = np.eye(3, dtype=np.int64)[train_y]
    assert fit_label_heads(train_x, labels, val_x, np.eye(3)[val_y], regularisation=0.07).regularisation == 0.07
