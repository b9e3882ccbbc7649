"""The evaluation pictures (matplotlib PNGs): curves, confusion matrix, ROC, reliability.

Image grids (samples, augmentations, worst mistakes) are drawn by
:func:`imgclf.pictures.save_image_grid`; this module draws the charts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.evaluation.metrics import reliability, row_normalised

MAX_CLASSES_LABELLED = 30  # above this the confusion matrix drops its tick labels and numbers
MAX_ROC_CURVES = 10

log = logging.getLogger(__name__)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, train against validation; the shaded band is the overfitting gap."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [int(row["epoch"]) for row in history]
    for axis, metric in zip(axes, ("loss", "accuracy")):
        train = np.array([_number(row.get(f"train_{metric}")) for row in history])
        val = np.array([_number(row.get(f"val_{metric}")) for row in history])
        axis.plot(epochs, train, marker="o", label=f"train {metric}")
        if not np.isnan(val).all():
            axis.plot(epochs, val, marker="o", label=f"validation {metric}")
            axis.fill_between(epochs, train, val, alpha=0.15, color="grey", label="gap")
        stages = [row.get("stage") for row in history]
        for index in range(1, len(stages)):
            if stages[index] != stages[index - 1]:
                axis.axvline(epochs[index] - 0.5, color="black", linestyle=":", linewidth=1)
                axis.text(epochs[index] - 0.45, axis.get_ylim()[1], stages[index], va="top", fontsize=8)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def plot_confusion_matrix(confusion: np.ndarray, classes: list[str], path: Path,
                          title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (what share of each true class went where), counts in the cells."""
    plt = _pyplot()
    confusion = np.asarray(confusion)
    shares = row_normalised(confusion)
    side = min(3 + 0.45 * len(classes), 18)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    labelled = len(classes) <= MAX_CLASSES_LABELLED
    if labelled:
        axis.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
        axis.set_yticks(range(len(classes)), classes)
        for true in range(len(classes)):
            for predicted in range(len(classes)):
                if confusion[true, predicted]:
                    axis.text(predicted, true, str(confusion[true, predicted]), ha="center", va="center", fontsize=8,
                              color="white" if shares[true, predicted] > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return _save(figure, path)


def plot_roc(labels: np.ndarray, probabilities: np.ndarray, classes: list[str], path: Path,
             decision: dict[str, Any] | None = None, split: str | None = None) -> Path:
    """One-vs-rest ROC curves (the classes with the lowest AUC when there are many).

    A two-class model gets its positive class's ROC and precision-recall
    curves, with ``decision`` (:func:`imgclf.evaluation.binary.binary_decision_metrics`)
    marked on both: where the model's threshold puts it on these images.
    A curve that cannot be drawn (no positive or no negative images: a small
    ``split``) is left out, and the chart and the log say why in our words.
    """
    plt = _pyplot()
    two = len(classes) == 2
    positive_index = classes.index(decision["positive"]) if two and decision else 1
    figure, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6, 5), squeeze=False)
    title = f"ROC for '{classes[positive_index]}'" if two else "ROC, one vs rest"
    missing = _cannot_draw(labels == positive_index, title, split) if two else None
    if missing is None:
        _roc_curves(axes[0, 0], labels, probabilities, classes, positive_index if two else None, decision, split)
    else:
        _say_missing(axes[0, 0], missing)
    if two:
        _precision_recall_curve(axes[0, 1], labels == positive_index, probabilities[:, positive_index],
                                classes[positive_index], decision, split)
    return _save(figure, path)


def _cannot_draw(truth: np.ndarray, chart: str, split: str | None) -> str | None:
    """Why a one-vs-rest chart has no curve (no positive, or no negative, images), None when it can be drawn."""
    where = f"in {split}" if split else "among these images"
    if not truth.any():
        return f"{chart}: no positive images {where}"
    if truth.all():
        return f"{chart}: no negative images {where}"
    return None


def _say_missing(axis: Any, reason: str) -> None:
    """An empty chart that says why, and the same line in the log."""
    log.info(reason)
    axis.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
    axis.set_axis_off()


def _roc_curves(axis: Any, labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                positive_index: int | None, decision: dict[str, Any] | None, split: str | None) -> None:
    """The ROC chart: the positive class's curve (two classes), else the lowest-AUC classes' curves."""
    from sklearn.metrics import auc, roc_curve

    curves = []
    for index, name in enumerate(classes):
        positive = labels == index
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, probabilities[:, index])
            curves.append((auc(fpr, tpr), name, fpr, tpr))
    if not curves:
        _say_missing(axis, f"ROC, one vs rest: every image {f'in {split} ' if split else ''}is of one class")
        return
    curves.sort(key=lambda curve: curve[0])
    positive = classes[positive_index] if positive_index is not None else None
    shown = [curve for curve in curves if curve[1] == positive] if positive else curves[:MAX_ROC_CURVES]
    for area, name, fpr, tpr in shown:
        axis.plot(fpr, tpr, label=f"{name} (AUC {area:.3f})")
    if positive and decision:
        axis.plot(decision["false_positive_rate"], decision["recall"], "o", color="C3", markersize=9,
                  label=f"threshold {decision['threshold']:.3g} ({decision['goal']})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    hidden = len(curves) - len(shown)
    axis.set_title(f"ROC for '{positive}'" if positive else
                   "ROC, one vs rest" + (f" (the {len(shown)} lowest AUCs)" if hidden > 0 else ""))
    axis.legend(fontsize=8)


def _precision_recall_curve(axis: Any, truth: np.ndarray, scores: np.ndarray, positive: str,
                            decision: dict[str, Any] | None, split: str | None) -> None:
    """A two-class model's precision-recall chart for its positive class, with its threshold's point."""
    from sklearn.metrics import precision_recall_curve

    title = f"precision-recall for '{positive}'"
    missing = _cannot_draw(truth, title, split) if not truth.any() else None  # without negatives it is drawn
    if missing is not None:
        _say_missing(axis, missing)
        return
    precision, recall, _ = precision_recall_curve(truth, scores)
    axis.plot(recall, precision)
    if decision:
        axis.plot(decision["recall"], decision["precision"], "o", color="C3", markersize=9,
                  label=f"threshold {decision['threshold']:.3g}: precision {decision['precision']:.3f}, "
                        f"recall {decision['recall']:.3f}")
        axis.legend(fontsize=8, loc="lower left")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(title)


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: Path, error: float,
                     title: str = "reliability") -> Path:
    """Accuracy against confidence per bin; on the diagonal a model's confidence can be taken at its word."""
    plt = _pyplot()
    confidence, accuracy, counts = reliability(labels, probabilities)
    edges = np.linspace(0, 1, len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    figure, axis = plt.subplots(figsize=(5.5, 5))
    filled = counts > 0
    axis.bar(centres[filled], accuracy[filled], width=edges[1] - edges[0], edgecolor="black", alpha=0.7,
             label="accuracy")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axis.set_xlabel("confidence (top probability)")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{title} (ECE {error:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(loc="upper left")
    return _save(figure, path)


def plot_backend_comparison(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Loss and accuracy per epoch of the same network trained on each backend: one colour per backend,
    dashed for training and solid for validation."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for colour, (backend, history) in enumerate(histories.items()):
        epochs = [int(row["epoch"]) for row in history]
        for axis, metric in zip(axes, ("loss", "accuracy")):
            train = [_number(row.get(f"train_{metric}")) for row in history]
            val = np.array([_number(row.get(f"val_{metric}")) for row in history])
            axis.plot(epochs, train, linestyle="--", marker=".", color=f"C{colour}", label=f"{backend} train")
            if not np.isnan(val).all():
                axis.plot(epochs, val, marker="o", color=f"C{colour}", label=f"{backend} validation")
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)
