"""Multi-label evaluation: metrics (scikit-learn), pictures, mistakes, label issues and report sections.

A multi-label model answers K yes/no questions per image, each at its own
threshold (chosen on validation, stored in the bundle). So there is no
confusion matrix or top-k here: the measures are per label (average
precision, which needs no threshold, and precision/recall/F1 at the
threshold), their micro, macro and per-image ("samples") averages, the share
of images whose whole label set is right (subset accuracy), the share of
wrong yes/no answers (Hamming loss) and how many labels an image gets, said
against true. The same figures at 0.5 show what the tuned thresholds bring.
``truth`` is always an (N, K) 0/1 array in the model's class order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from imgclf.data.decode import decode_file
from imgclf.data.sources import Item
from imgclf.evaluation.label_issues import find_label_issues
from imgclf.evaluation.pages import image, table
from imgclf.evaluation.plots import _pyplot, _save
from imgclf.pictures import save_image_grid

LOWEST_AP_CURVES = 6  # PR curves drawn: the labels with the lowest average precision
GALLERY_SIZE = 12
THUMBNAIL = 128


def truth_matrix(items: list[Item], classes: list[str]) -> np.ndarray:
    """(N, K) 0/1 targets of ``items`` in ``classes`` order."""
    index = {name: position for position, name in enumerate(classes)}
    truth = np.zeros((len(items), len(classes)), dtype=np.int64)
    for row, item in enumerate(items):
        truth[row, [index[label] for label in item.labels]] = 1
    return truth


def multilabel_metrics(truth: np.ndarray, probabilities: np.ndarray, classes: list[str],
                       thresholds: np.ndarray) -> dict[str, Any]:
    """Every figure of a multi-label evaluation as JSON-ready values (decisions at ``thresholds``, (K,))."""
    truth = np.asarray(truth, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    said = probabilities >= thresholds[None, :]
    present = truth.any(axis=0)
    average_precision = np.full(len(classes), np.nan)
    if present.any():
        average_precision[present] = skm.average_precision_score(truth[:, present], probabilities[:, present],
                                                                 average=None)
    precision, recall, f1, support = skm.precision_recall_fscore_support(truth, said, average=None, zero_division=0)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    result: dict[str, Any] = {
        "multilabel": True,
        "images": int(len(truth)),
        "mean_average_precision": float(np.nanmean(average_precision)) if present.any() else None,
        "per_label": {name: {"average_precision": None if np.isnan(average_precision[i]) else float(average_precision[i]),
                             "threshold": float(thresholds[i]), "precision": float(precision[i]),
                             "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i]),
                             "predicted": int(said[:, i].sum())}
                      for i, name in enumerate(classes)},
        **decision_figures(truth, said),
        "log_loss": float(-np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped))),
        "label_cardinality": {"true": float(truth.sum(axis=1).mean()), "predicted": float(said.sum(axis=1).mean())},
        "at_0.5": decision_figures(truth, probabilities >= 0.5),
        "cooccurrence": (truth.T @ truth).tolist(),
    }
    return result


def decision_figures(truth: np.ndarray, said: np.ndarray) -> dict[str, float]:
    """Micro, macro and samples F1, subset accuracy and Hamming loss of 0/1 decisions."""
    return {"micro_f1": float(skm.f1_score(truth, said, average="micro", zero_division=0)),
            "macro_f1": float(skm.f1_score(truth, said, average="macro", zero_division=0)),
            "samples_f1": float(skm.f1_score(truth, said, average="samples", zero_division=0)),
            "subset_accuracy": float(skm.accuracy_score(truth, said)),
            "hamming_loss": float(skm.hamming_loss(truth, said))}


# ----------------------------------------------------------------- pictures
def plot_lowest_ap_curves(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], thresholds: np.ndarray,
                          path: Path) -> Path:
    """Precision-recall curves of the labels with the lowest average precision, each with its threshold's point."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 5))
    curves = []
    for index, name in enumerate(classes):
        if truth[:, index].any():
            curves.append((skm.average_precision_score(truth[:, index], probabilities[:, index]), index, name))
    for area, index, name in sorted(curves)[:LOWEST_AP_CURVES]:
        precision, recall, _ = skm.precision_recall_curve(truth[:, index], probabilities[:, index])
        line = axis.plot(recall, precision, label=f"{name} (AP {area:.3f})")[0]
        said = probabilities[:, index] >= thresholds[index]
        hits = float((said & (truth[:, index] > 0)).sum())
        axis.plot(hits / max(truth[:, index].sum(), 1), hits / max(said.sum(), 1), "o", color=line.get_color())
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_title("precision-recall, lowest-AP labels (dot: the threshold)")
    axis.legend(fontsize=8, loc="lower left")
    return _save(figure, path)


def plot_cooccurrence(truth: np.ndarray, said: np.ndarray, classes: list[str], path: Path) -> Path:
    """Images per label pair, true and predicted side by side (the diagonal: images per label)."""
    plt = _pyplot()
    side = min(3 + 0.4 * len(classes), 14)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    labelled = len(classes) <= 30
    for axis, matrix, title in ((axes[0], truth.T @ truth, "true"), (axes[1], said.T.astype(np.int64) @ said,
                                                                      "predicted")):
        shown = axis.imshow(matrix, cmap="Blues")
        figure.colorbar(shown, ax=axis, fraction=0.046, label="images")
        if labelled:
            axis.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
            axis.set_yticks(range(len(classes)), classes)
        axis.set_title(f"label co-occurrence ({title})")
    return _save(figure, path)


def worst_mistakes(paths: list[str], truth: np.ndarray, probabilities: np.ndarray, said: np.ndarray,
                   classes: list[str], limit: int = GALLERY_SIZE) -> list[dict[str, Any]]:
    """Images with missed or spurious labels, the most confidently wrong first (cross-entropy of their errors)."""
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    wrong = said != (truth > 0)
    cost = np.where(wrong, -np.log(np.where(truth > 0, clipped, 1 - clipped)), 0.0).sum(axis=1)
    order = [int(i) for i in np.argsort(-cost, kind="stable") if wrong[i].any()][:limit]
    return [{"path": paths[i], "labels": [classes[j] for j in np.flatnonzero(truth[i])],
             "missed": {classes[j]: round(float(probabilities[i, j]), 6) for j in np.flatnonzero(wrong[i] & (truth[i] > 0))},
             "spurious": {classes[j]: round(float(probabilities[i, j]), 6)
                          for j in np.flatnonzero(wrong[i] & (truth[i] == 0))}} for i in order]


def draw_mistakes(mistakes: list[dict[str, Any]], path: Path) -> Path:
    """Thumbnails of ``worst_mistakes`` captioned with their missed and spurious labels."""
    images, titles = [], []
    for mistake in mistakes:
        decoded = decode_file(Path(mistake["path"]), (THUMBNAIL, THUMBNAIL), policy="pad")
        if decoded.pixels is None:
            continue
        images.append(decoded.pixels)
        titles.append("\n".join([Path(mistake["path"]).name,
                                 *(f"missed {name} {p:.0%}" for name, p in list(mistake["missed"].items())[:2]),
                                 *(f"spurious {name} {p:.0%}" for name, p in list(mistake["spurious"].items())[:2])]))
    return save_image_grid(images, titles, path, columns=4, title="worst mistakes: missed and spurious labels")


# ----------------------------------------------------------------- label issues
def find_multilabel_issues(paths: list[str], truth: np.ndarray, probabilities: np.ndarray,
                           classes: list[str]) -> list[dict[str, Any]]:
    """Likely label errors, one per (image, label): confident learning on each label's yes/no question.

    cleanlab's multi-label method does the same (one-vs-rest): each label
    is a two-class problem with its own self-confidence thresholds, so a
    given label the model confidently denies is flagged as spurious ("dog",
    the model says "not dog") and a missing one it confidently sees as
    missed ("not dog", the model says "dog"). Strongest evidence first.
    """
    issues: list[dict[str, Any]] = []
    for index, name in enumerate(classes):
        column = np.stack([1 - probabilities[:, index], probabilities[:, index]], axis=1)
        issues += find_label_issues(paths, truth[:, index].astype(np.int64), column, [f"not {name}", name])
    issues.sort(key=lambda issue: -issue["evidence"])
    return issues


# ----------------------------------------------------------------- the report
def report_sections(metrics: dict[str, Any], pictures: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(anchor, title, HTML) of the report's multi-label sections: metrics, per-label table, PR, co-occurrence."""
    overall = [["images", metrics["images"]], ["mAP", metrics["mean_average_precision"]]]
    at_half = metrics["at_0.5"]
    figures = [["micro F1", "micro_f1"], ["macro F1", "macro_f1"], ["samples F1", "samples_f1"],
               ["subset accuracy", "subset_accuracy"], ["Hamming loss", "hamming_loss"]]
    decisions = [[name, metrics[key], at_half[key]] for name, key in figures]
    cardinality = metrics["label_cardinality"]
    overall += [["labels per image (true)", cardinality["true"]],
                ["labels per image (predicted)", cardinality["predicted"]], ["log loss (mean per label)",
                                                                              metrics["log_loss"]]]
    per_label = [[name, row["average_precision"], row["threshold"], row["precision"], row["recall"], row["f1"],
                  row["support"], row["predicted"]]
                 for name, row in sorted(metrics["per_label"].items(),
                                         key=lambda pair: (pair[1]["average_precision"] is None,
                                                           pair[1]["average_precision"] or 0.0))]
    return [
        ("metrics", f"Multi-label metrics on the {metrics.get('split', '')} split",
         table(["metric", "value"], overall) + table(["decision", "per-label thresholds", "at 0.5"], decisions)
         + '<p class="muted">Each label is said when its probability reaches its threshold, chosen on the '
           "validation split (the bundle's threshold_goal); the last column is the same model deciding at 0.5.</p>"),
        ("per-label", "Per label (lowest average precision first)",
         table(["label", "AP", "threshold", "precision", "recall", "F1", "images", "predicted"], per_label)),
        ("pr", "Precision-recall, lowest-AP labels", image(pictures.get("pr_curves"), "precision-recall curves")),
        ("cooccurrence", "Label co-occurrence", image(pictures.get("cooccurrence"), "label co-occurrence")),
    ]


def summary_card(metrics: dict[str, Any]) -> tuple[str, str]:
    """The report's summary card for a multi-label evaluation."""
    return f"mAP ({metrics.get('split', '')})", f"{metrics['mean_average_precision'] or 0:.3f}"
