"""Charts that cannot be drawn on a small split say so in our words; no library warning reaches the console."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from imgclf.evaluation.plots import plot_roc

PROBABILITIES = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])


@pytest.mark.filterwarnings("error")
def test_a_binary_split_without_positives_draws_no_curve_and_says_why(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgclf"):
        picture = plot_roc(np.zeros(4, dtype=int), PROBABILITIES, ["n", "p"], tmp_path / "roc.png", None, "val")
    assert picture.is_file()
    assert "ROC for 'p': no positive images in val" in caplog.messages
    assert "precision-recall for 'p': no positive images in val" in caplog.messages


@pytest.mark.filterwarnings("error")
def test_a_binary_split_without_negatives_draws_precision_recall_only(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgclf"):
        plot_roc(np.ones(4, dtype=int), PROBABILITIES, ["n", "p"], tmp_path / "roc.png", None, "val")
    assert caplog.messages == ["ROC for 'p': no negative images in val"]


@pytest.mark.filterwarnings("error")
def test_a_split_of_one_class_draws_no_one_vs_rest_curve_and_says_why(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    probabilities = np.hstack([PROBABILITIES, np.zeros((4, 1))])
    with caplog.at_level(logging.INFO, logger="imgclf"):
        plot_roc(np.zeros(4, dtype=int), probabilities, ["a", "b", "c"], tmp_path / "roc.png", None, "test")
    assert caplog.messages == ["ROC, one vs rest: every image in test is of one class"]
