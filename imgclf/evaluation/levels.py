"""Scores of a hierarchical model at every depth of its tree (``animals`` / ``animals/dog`` / ...).

A leaf-level mistake between two dog breeds is not the same as a dog
called a truck: each depth gets its own accuracy, macro F1 and confusion
matrix (scikit-learn). A node's probability is the sum of its leaves'
(:meth:`imgclf.data.hierarchy.Hierarchy.at_depth`), and each depth is
scored by its own most probable node; images whose leaf is shallower than
a depth are left out of that depth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from imgclf.data.hierarchy import label_tree
from imgclf.evaluation.plots import plot_confusion_matrix


def level_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """One entry per depth (1 = top): images, accuracy, macro F1, node names and confusion matrix; [] when flat."""
    tree = label_tree(classes)
    if tree is None:
        return []
    levels = []
    for depth in range(1, tree.depth + 1):
        totals, truth, reaches = tree.at_depth(depth, probabilities, np.asarray(labels, dtype=np.int64))
        nodes = tree.nodes[depth - 1]
        true, predicted = truth[reaches], totals[reaches].argmax(axis=1)
        indices = list(range(len(nodes)))
        levels.append({
            "depth": depth,
            "images": int(reaches.sum()),
            "accuracy": float(skm.accuracy_score(true, predicted)) if len(true) else None,
            "macro_f1": float(skm.f1_score(true, predicted, labels=indices, average="macro", zero_division=0))
            if len(true) else None,
            "classes": nodes,
            "confusion_matrix": skm.confusion_matrix(true, predicted, labels=indices).tolist(),
        })
    return levels


def plot_level_confusions(levels: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """``confusion_level{d}.png`` for every depth above the deepest (whose matrix is the leaf one, drawn already)."""
    return {f"confusion_level{level['depth']}": plot_confusion_matrix(
        np.array(level["confusion_matrix"]), level["classes"], out / f"confusion_level{level['depth']}.png",
        title=f"confusion matrix, level {level['depth']}") for level in levels[:-1]}
