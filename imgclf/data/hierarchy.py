"""Hierarchical labels written as paths (``Dairy/Milk/Oat-Milk``): parse them, and read leaf scores per level.

One small module so every hierarchical label kind asks the same rules: a
path's parts are separated by ``/`` and none may be empty; the probability
of a node is the sum of its children's (and its own, when a node is also a
label itself); a suggestion backs off to the deepest level that is sure
enough. Catalogue matching and hierarchical image labels (nested class
folders, CSV labels with ``/``) read the same tree: training cuts labels to
``--label-depth``, predict and serve give the path per level, evaluate
scores every depth, inspect counts every node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from imgclf.data.sources import ImageDataset, Item
from imgclf.errors import ImgclfError

SEPARATOR = "/"


def parse_path(label: str, where: str = "label") -> tuple[str, ...]:
    """The parts of ``label``; an error naming ``where`` when a part is empty (``Dairy//Milk``, ``/Milk``)."""
    parts = tuple(part.strip() for part in label.split(SEPARATOR))
    if not all(parts):
        raise ImgclfError(f"{where}: {label!r} is not a category path; write its levels as "
                          f"Parent{SEPARATOR}Child{SEPARATOR}Leaf with no empty level")
    return parts


def cut_path(label: str, depth: int, where: str = "label") -> str:
    """The first ``depth`` levels of ``label`` (all of it when it has no more): ``cut_path("a/b/c", 1) == "a"``."""
    return SEPARATOR.join(parse_path(label, where)[:depth])


def cut_items(items: Sequence[Item], depth: int, where: str = "label") -> list[Item]:
    """``items`` with every label cut to ``depth`` levels (a multi-label item's duplicates merged)."""
    return [replace(item, labels=tuple(dict.fromkeys(cut_path(label, depth, where) for label in item.labels)))
            for item in items]


def cut_labels(dataset: ImageDataset, depth: int) -> ImageDataset:
    """``dataset`` trained at ``depth`` levels (``--label-depth``): its items' labels and its classes cut."""
    items = cut_items(dataset.items, depth, dataset.source)
    return replace(dataset, items=items, classes=sorted({label for item in items for label in item.labels}))


def label_tree(classes: Sequence[str], where: str = "label") -> Hierarchy | None:
    """The tree above ``classes`` when any of them is a path, else None (a flat model: nothing changes)."""
    if not any(SEPARATOR in name for name in classes):
        return None
    return Hierarchy(classes, where)


def level_columns(depth: int) -> list[str]:
    """``level1, level1_confidence, level2, ...``: the per-level output columns of a ``depth``-level tree (none when flat)."""
    return [f"level{level}{suffix}" for level in range(1, depth + 1) for suffix in ("", "_confidence")] if depth > 1 else []


def node_counts(histogram: Mapping[str, int]) -> dict[str, int]:
    """Images under every node of the tree (``animals`` counts ``animals/dog`` and ``animals/cat``), by path."""
    counts: dict[str, int] = defaultdict(int)
    for label, count in histogram.items():
        parts = parse_path(label)
        for depth in range(1, len(parts) + 1):
            counts[SEPARATOR.join(parts[:depth])] += count
    return dict(sorted(counts.items()))


def same_leaf_warnings(classes: Sequence[str]) -> list[str]:
    """One line per leaf name found under two or more parents (``animals/mouse``, ``devices/mouse``).

    Usually a folder put in the wrong place or a sub-category copied into
    two trees; sometimes meant (a ``mouse`` animal and device), so a
    warning, never an error.
    """
    parents: dict[str, list[str]] = defaultdict(list)
    for name in classes:
        parts = parse_path(name)
        parents[parts[-1]].append(name)
    return [f"the category name '{leaf}' is under {len(paths)} parents ({', '.join(paths)}): a likely folder "
            "mistake; move or rename one if they are the same thing" for leaf, paths in sorted(parents.items())
            if len(paths) > 1]


@dataclass(frozen=True)
class LevelSuggestion:
    """The most probable node at one depth of the tree and its probability (the sum of its leaves')."""

    depth: int  # 1 = the top level
    label: str  # the path down to this level, e.g. "Dairy/Milk"
    probability: float


class Hierarchy:
    """The tree above a list of leaf labels; ``levels`` turns probabilities over leaves into per-level ones."""

    def __init__(self, leaves: Sequence[str], where: str = "label") -> None:
        self.leaves = list(leaves)
        self.paths = [parse_path(leaf, where) for leaf in self.leaves]
        self.depth = max((len(path) for path in self.paths), default=0)
        # membership[d][n, l] = 1 when leaf l sits under node n at depth d+1
        self.nodes: list[list[str]] = []
        self.membership: list[np.ndarray] = []
        for depth in range(1, self.depth + 1):
            names = sorted({SEPARATOR.join(path[:depth]) for path in self.paths if len(path) >= depth})
            position = {name: row for row, name in enumerate(names)}
            matrix = np.zeros((len(names), len(self.leaves)), dtype=np.float64)
            for column, path in enumerate(self.paths):
                if len(path) >= depth:
                    matrix[position[SEPARATOR.join(path[:depth])], column] = 1.0
            self.nodes.append(names)
            self.membership.append(matrix)

    @property
    def is_flat(self) -> bool:
        return self.depth <= 1

    def at_depth(self, depth: int, probabilities: np.ndarray, truth: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores cut to one depth: (N, nodes) summed probabilities, each true leaf's node, and which leaves reach it.

        ``truth`` holds leaf indices; a leaf shallower than ``depth`` has no
        node there, so its rows are marked False and left out of that level.
        """
        matrix = self.membership[depth - 1]
        reaches = matrix[:, truth].sum(axis=0) > 0
        return probabilities @ matrix.T, matrix[:, truth].argmax(axis=0), reaches

    def levels(self, probabilities: np.ndarray) -> list[LevelSuggestion]:
        """From the top down, the most probable child of the node chosen above, given probabilities over ``leaves``.

        The path stops at a leaf, so a shallow leaf (``Dairy/Yoghurt`` beside
        ``Dairy/Milk/Oat-Milk``) gets as many levels as it has.
        """
        suggestions: list[LevelSuggestion] = []
        for depth, (names, matrix) in enumerate(zip(self.nodes, self.membership), start=1):
            prefix = suggestions[-1].label + SEPARATOR if suggestions else ""
            children = [row for row, name in enumerate(names) if name.startswith(prefix)]
            if not children:
                break
            totals = matrix[children] @ probabilities
            best = int(np.argmax(totals))
            suggestions.append(LevelSuggestion(depth, names[children[best]], float(totals[best])))
        return suggestions

    @staticmethod
    def back_off(levels: Sequence[LevelSuggestion], min_confidence: float) -> LevelSuggestion | None:
        """The deepest level at least ``min_confidence`` sure, following the top path; None when not even the top is.

        ``levels`` is one path (:meth:`levels`), so the answer never jumps to
        another branch.
        """
        chosen = None
        for level in levels:
            if level.probability < min_confidence:
                break
            chosen = level
        return chosen
