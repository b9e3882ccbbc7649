"""Hierarchical labels written as paths (``Dairy/Milk/Oat-Milk``): parse them, and read leaf scores per level.

One small module so every hierarchical label kind asks the same rules: a
path's parts are separated by ``/`` and none may be empty; the probability
of a node is the sum of its children's (and its own, when a node is also a
label itself); a suggestion backs off to the deepest level that is sure
enough. Catalogue matching uses it today; hierarchical image labels can
read the same tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgclf.errors import ImgclfError

SEPARATOR = "/"


def parse_path(label: str, where: str = "label") -> tuple[str, ...]:
    """The parts of ``label``; an error naming ``where`` when a part is empty (``Dairy//Milk``, ``/Milk``)."""
    parts = tuple(part.strip() for part in label.split(SEPARATOR))
    if not all(parts):
        raise ImgclfError(f"{where}: {label!r} is not a category path; write its levels as "
                          f"Parent{SEPARATOR}Child{SEPARATOR}Leaf with no empty level")
    return parts


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
