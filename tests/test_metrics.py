"""Metric values against small cases computed by hand, label issues, and the pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclf.evaluation.label_issues import find_label_issues
from imgclf.evaluation.metrics import compute_metrics, expected_calibration_error
from imgclf.evaluation.plots import plot_confusion_matrix, plot_reliability, plot_roc, plot_training_curves

CLASSES = ["cat", "dog", "fox"]
# five images: two cats, two dogs, one fox; predictions: cat, dog | dog, dog | cat
LABELS = np.array([0, 0, 1, 1, 2])
PROBABILITIES = np.array([
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.5, 0.3],
    [0.5, 0.1, 0.4],
])


def test_metrics_match_hand_computed_values() -> None:
    metrics = compute_metrics(LABELS, PROBABILITIES, CLASSES, top_k=(2,))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["confusion_matrix_normalised"][0] == [0.5, 0.5, 0.0]
    cat, dog, fox = (metrics["per_class"][name] for name in CLASSES)
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2), 2)
    assert (dog["precision"], dog["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert dog["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert (fox["precision"], fox["recall"], fox["f1"]) == (0.0, 0.0, 0.0)
    assert metrics["macro_avg"]["recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert metrics["weighted_avg"]["recall"] == pytest.approx((2 * 0.5 + 2 * 1 + 0) / 5)
    # top-2: the fox's 0.4 is second best, the second cat's 0.3 is second best too
    assert metrics["top_2_accuracy"] == pytest.approx(5 / 5)
    expected_log_loss = -np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.4]))
    assert metrics["log_loss"] == pytest.approx(expected_log_loss)
    assert metrics["most_confused"] == [{"true": "cat", "predicted": "dog", "count": 1},
                                        {"true": "fox", "predicted": "cat", "count": 1}]
    # one vs rest by hand: cat scores (.7, .3 | .1, .2, .5) rank 5 of 6 pairs right; dog (.8, .5 | .2, .6, .1)
    # 5 of 6; fox (.4 | .1, .1, .1, .3) all 4
    assert metrics["roc_auc_per_class"] == pytest.approx({"cat": 5 / 6, "dog": 5 / 6, "fox": 1.0})
    assert metrics["roc_auc_ovr"] == pytest.approx((5 / 6 + 5 / 6 + 1) / 3)


def test_expected_calibration_error_by_hand() -> None:
    labels = np.array([0, 1, 0, 0])
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    # all confidences fall in the upper bin (0.5, 1.0]: mean confidence 0.75, accuracy 2/4
    assert expected_calibration_error(labels, probabilities, bins=2) == pytest.approx(abs(0.5 - 0.75))
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), perfect) == pytest.approx(0.0)


def test_binary_case_has_roc_and_precision_recall_curves() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = compute_metrics(labels, np.stack([1 - scores, scores], axis=1), ["no", "yes"])
    assert metrics["roc_auc_ovr"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered right
    assert set(metrics["curves"]) == {"roc", "precision_recall"}


def test_label_issues_flag_the_planted_mislabel_first() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probabilities = np.full((60, 3), 0.05)
    probabilities[np.arange(60), labels] = 0.9
    probabilities += rng.uniform(0, 0.02, probabilities.shape)
    probabilities[7] = [0.02, 0.96, 0.02]  # labelled cat, the model is sure it is a dog
    probabilities[30] = [0.3, 0.4, 0.3]  # an unsure dog: not evidence of a wrong label
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    issues = find_label_issues([f"img{i}.png" for i in range(60)], labels, probabilities, CLASSES)
    assert issues[0]["path"] == "img7.png" and (issues[0]["given"], issues[0]["predicted"]) == ("cat", "dog")
    assert "img30.png" not in {issue["path"] for issue in issues}


def test_pictures_are_drawn(tmp_path: Path) -> None:
    history = [{"epoch": 1, "stage": "probe", "train_loss": 1.0, "val_loss": 0.9, "train_accuracy": 0.5,
                "val_accuracy": 0.6},
               {"epoch": 2, "stage": "finetune", "train_loss": 0.5, "val_loss": "", "train_accuracy": 0.8,
                "val_accuracy": ""}]
    metrics = compute_metrics(LABELS, PROBABILITIES, CLASSES)
    paths = [plot_training_curves(history, tmp_path / "curves.png"),
             plot_confusion_matrix(np.array(metrics["confusion_matrix"]), CLASSES, tmp_path / "confusion.png"),
             plot_roc(LABELS, PROBABILITIES, CLASSES, tmp_path / "roc.png"),
             plot_roc(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]]), ["a", "b"],
                      tmp_path / "roc2.png"),
             plot_reliability(LABELS, PROBABILITIES, tmp_path / "reliability.png", 0.1)]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    # confidences .7 .6 .8 .5 .5 with 15 bins: .5 and .5 share a bin (one right, one wrong), the rest alone
    by_hand = (abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.8) + 2 * abs(0.5 - 0.5)) / 5
    assert metrics["expected_calibration_error"] == pytest.approx(by_hand)
