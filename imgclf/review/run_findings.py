"""A training run's findings about a dataset: likely label errors and its worst mistakes, with the nearest images.

Read from the files ``evaluate`` writes into ``RUN/evaluation``:
``label_issues.csv`` (from the run's held-out predictions at the end of
training, or out-of-fold ones of the training images after ``imgclf evaluate
RUN --split train --label-issues --folds 5``) and ``worst_mistakes.csv``.
The evidence beside each is the nearest images of the given and of the
suggested class, in the run's own embedding space (cached, so a second
opening does not embed again).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.review.findings import ImageIndex
from imgclf.review.items import Evidence, ReviewItem
from imgclf.runs import RunDirectory

log = logging.getLogger(__name__)

NEAREST = 3  # images shown per class beside a suggestion


def run_findings(run_dir: str | Path, index: ImageIndex, neighbours: bool = True) -> list[ReviewItem]:
    """The run's likely label errors and worst mistakes among ``index``'s files, with the nearest images."""
    run = RunDirectory(Path(run_dir))
    if not run.path.is_dir():
        raise ImgclfError(f"--run {run.path} does not exist; give a run directory (runs/NAME)")
    evaluation = run.path / "evaluation"
    issues = _rows(evaluation / "label_issues.csv", "likely label errors", "--split train --label-issues --folds 5")
    mistakes = _rows(evaluation / "worst_mistakes.csv", "worst mistakes", "")
    origin = _issues_origin(evaluation / "metrics.json") if issues else ""
    nearest = _Nearest(run.path, index) if neighbours and (issues or mistakes) else None
    found = []
    for kind, rows, why in (("likely label error", issues, origin), ("worst mistake", mistakes, "a held-out mistake")):
        for row in rows:
            number = index.number(row["path"])
            if number is None:
                continue
            given, predicted = row["given"], row["predicted"]
            suggestions = ((predicted, float(row["predicted_probability"])), (given, float(row["given_probability"])))
            evidence = nearest.evidence(number, (given, predicted)) if nearest else ()
            found.append(ReviewItem(key=index.keys[number], image=number, kind=kind, label=given, answer=given,
                                    reason=f"the model says {predicted!r} ({why})", suggestions=suggestions,
                                    evidence=evidence))
    return found


def _rows(path: Path, what: str, flags: str) -> list[dict[str, str]]:
    if not path.is_file():
        log.warning(f"no {what}: {path} is missing; `imgclf evaluate {path.parent.parent} {flags}`".rstrip()
                    + " writes it")
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _issues_origin(metrics: Path) -> str:
    """Where the label issues came from and which images they question; a warning when those are held out only
    (``evaluate RUN --label-issues`` without ``--split`` checks the val split's labels, not the training images')."""
    try:
        written = json.loads(metrics.read_text())
        origin, split = written["label_issues_from"], written.get("split")
    except (OSError, ValueError, KeyError, TypeError):
        return "from the run's predictions"
    if split not in (None, "train", "all"):
        log.warning(f"the likely label errors in {metrics.parent} question only the {split} split's labels; "
                    f"`imgclf evaluate {metrics.parent.parent} --split train --label-issues --folds 5` checks the "
                    "training images")
    return f"from {origin}" + (f", {split} split" if split else "")


class _Nearest:
    """The dataset embedded by the run's model, to find each image's nearest neighbours within a class."""

    def __init__(self, run: Path, index: ImageIndex) -> None:
        from imgclf.embeddings.embedder import Embedder
        from imgclf.embeddings.similarity import normalise

        self.index = index
        try:
            embedded = Embedder.load(run).embed_files(index.paths, description="Embedding for the nearest images")
        except ImgclfError as error:
            log.warning(f"no nearest images beside the suggestions: {error}")
            self.vectors, self.ok = np.zeros((len(index.paths), 1), np.float32), np.zeros(len(index.paths), bool)
        else:
            self.vectors, self.ok = normalise(embedded.vectors), embedded.ok  # cosine: a trained model's rows are raw
        self.labels = np.array([index.label(number) for number in range(len(index.paths))], dtype=object)

    def evidence(self, number: int, classes: tuple[str, ...]) -> tuple[Evidence, ...]:
        if not self.ok[number]:
            return ()
        scores = self.vectors @ self.vectors[number]
        shown = []
        for label in dict.fromkeys(classes):
            members = np.flatnonzero((self.labels == label) & self.ok)
            members = members[members != number]
            for other in members[np.argsort(-scores[members], kind="stable")][:NEAREST]:
                shown.append(Evidence(int(other), f"nearest {label}: {self.index.items[other].path.name} "
                                                  f"({scores[other]:.2f})"))
        return tuple(shown)
