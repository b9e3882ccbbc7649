"""The regression gate: did an update make any old class worse on the old model's held-out images?

An update is judged where the old model was judged (its test split, else
val), class by class, with the measure a user reads in the report: recall
(how many of the class's images are still called by its name) for a
single-label model, average precision for a multi-label one. A class fails
when it drops by more than ``max_drop`` percentage points, but only with
enough images to mean something:

- at least ``MIN_SUPPORT`` (10) held-out images: below that a class's
  recall moves in steps of over 10 points, so any change would look like a
  regression or an improvement and the gate would refuse at random;
- (single-label) at least ``MIN_LOST`` (2) images fewer called correctly:
  one image is never a verdict, however few the class has.

Classes under the support are shown, marked "too few to judge".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.evaluation.gate_section import GATE_FILE
from imgclf.files import write_text_atomic

MIN_SUPPORT = 10
MIN_LOST = 2
DEFAULT_MAX_DROP = 2.0


@dataclass(frozen=True)
class ClassScore:
    """One class's figure on some images: its support and recall (or AP), and the images called right."""

    support: int
    score: float | None  # 0..1; None without images of the class
    correct: int = 0


@dataclass(frozen=True)
class ClassChange:
    """An old class before and after the update, on the old held-out images."""

    name: str
    support: int
    before: float | None
    after: float | None
    drop: float  # percentage points lost (negative: gained)
    judged: bool
    failed: bool


@dataclass
class GateResult:
    """The gate's verdict, written as ``gate.json`` and shown as a table."""

    metric: str  # "recall" or "average precision"
    split: str
    max_drop: float
    min_support: int
    classes: list[ClassChange]
    new_classes: dict[str, ClassScore] = field(default_factory=dict)
    forced: bool = False

    @property
    def failed(self) -> list[ClassChange]:
        return [change for change in self.classes if change.failed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "forced": self.forced, "metric": self.metric, "split": self.split,
                "max_drop": self.max_drop, "min_support": self.min_support,
                "classes": [asdict(change) for change in self.classes],
                "failed": [change.name for change in self.failed],
                "new_classes": {name: asdict(score) for name, score in self.new_classes.items()}}

    def write(self, run_dir: Path) -> Path:
        return write_text_atomic(run_dir / GATE_FILE, json.dumps(self.to_dict(), indent=2))


def class_scores(labels: list[tuple[str, ...]], probabilities: np.ndarray, predicted: np.ndarray | None,
                 classes: list[str], multilabel: bool) -> dict[str, ClassScore]:
    """Each class's recall (``predicted``: the class index each image is called) or, multi-label, its AP."""
    scores: dict[str, ClassScore] = {}
    for index, name in enumerate(classes):
        truth = np.array([name in given for given in labels], dtype=bool)
        support = int(truth.sum())
        if not support:
            scores[name] = ClassScore(0, None)
        elif multilabel:
            from sklearn.metrics import average_precision_score

            scores[name] = ClassScore(support, float(average_precision_score(truth, probabilities[:, index])))
        else:
            correct = int((predicted[truth] == index).sum())  # type: ignore[index]  # single-label: always given
            scores[name] = ClassScore(support, correct / support, correct)
    return scores


def judge(before: dict[str, ClassScore], after: dict[str, ClassScore], *, multilabel: bool, split: str,
          max_drop: float = DEFAULT_MAX_DROP) -> GateResult:
    """Each old class's change from ``before`` to ``after`` (the same images, scored by the two models)."""
    if max_drop < 0:
        raise ImgclfError(f"--max-drop {max_drop} is negative; give the points an old class may lose, e.g. 2")
    changes = []
    for name, old in before.items():
        new = after.get(name, ClassScore(old.support, 0.0))
        drop = 100 * ((old.score or 0.0) - (new.score or 0.0))
        judged = old.support >= MIN_SUPPORT and old.score is not None
        lost = old.correct - new.correct
        failed = judged and drop > max_drop + 1e-9 and (multilabel or lost >= MIN_LOST)
        changes.append(ClassChange(name, old.support, old.score, new.score, round(drop, 4), judged, failed))
    return GateResult("average precision" if multilabel else "recall", split, max_drop, MIN_SUPPORT, changes)


def refusal(result: GateResult, out: str) -> str:
    """The one-line error of a failed gate: the classes, their before and after, and what to do."""
    worst = ", ".join(f"{change.name} {_points(change.before)} -> {_points(change.after)}"
                      for change in sorted(result.failed, key=lambda change: -change.drop))
    return (f"update refused: {result.metric} on the old {result.split} images dropped more than "
            f"{result.max_drop:g} points for {worst}; add more (and correctly labelled) photos of these classes and "
            f"of the classes they are now confused with, or give a larger --time-budget; pass --force to write "
            f"{out} anyway")


def _points(score: float | None) -> str:
    return "n/a" if score is None else f"{100 * score:.1f}%"
