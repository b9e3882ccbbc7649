"""``imgclf review DATA``: a dataset's findings as a review source whose decisions go to a corrections file.

The user's files are never touched: keep, exclude and relabel become rows of
the corrections CSV (``path,action,label,reason,time``), which ``train
--corrections`` applies and ``review --export`` turns into a corrected copy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from imgclf.data import corrections as corrections_file
from imgclf.data.sources import ImageDataset, load_source
from imgclf.review.findings import KINDS, Findings, ImageIndex, inspect_findings
from imgclf.review.items import BulkAction, Counts, Decision, ReviewItem
from imgclf.review.run_findings import run_findings
from imgclf.runs import slug

BULK = (BulkAction("keep-one", "Keep one of each duplicate group (exclude the other copies)"),
        BulkAction("exclude-broken", "Exclude all broken files"))


class DataReview:
    """The findings about one dataset, decided into ``corrections``."""

    title = "Dataset review"
    actions: tuple[str, ...] = ("keep", "exclude", "relabel")
    label_actions: tuple[str, ...] = ("relabel",)
    label_name = "label"

    def __init__(self, index: ImageIndex, findings: Findings, classes: list[str], corrections: Path) -> None:
        self.index = index
        self.findings = findings
        self._items = sorted(findings.items, key=lambda item: (_rank(item.kind), item.kind, item.label))
        self._reasons: dict[str, list[str]] = {}
        for item in self._items:
            self._reasons.setdefault(item.key, []).append(item.kind)
        self._classes = classes
        self.corrections = corrections
        self.where = str(corrections)

    def classes(self) -> list[str]:
        return self._classes

    def items(self) -> list[ReviewItem]:
        return self._items

    def image(self, index: int) -> Path | None:
        return self.index.paths[index] if 0 <= index < len(self.index.paths) else None

    def decisions(self) -> dict[str, Decision]:
        """The corrections file's rows about this dataset's findings, read again on every call."""
        if not self.corrections.exists():
            return {}
        return {row.path: Decision(row.action, row.label, row.time) for row in corrections_file.read(self.corrections)
                if row.action != "rename" and row.path in self._reasons}

    def decide(self, changes: dict[str, Decision | None]) -> None:
        corrections_file.change(
            self.corrections,
            upserts=[corrections_file.Correction(key, decision.action, decision.label,
                                                 "; ".join(dict.fromkeys(self._reasons.get(key, []))), decision.time)
                     for key, decision in changes.items() if decision is not None],
            removals=[("file", key) for key, decision in changes.items() if decision is None])

    def bulk_actions(self) -> list[BulkAction]:
        offered = {"keep-one": bool(self.findings.groups), "exclude-broken": bool(self.findings.broken)}
        return [action for action in BULK if offered[action.name]]

    def bulk(self, name: str) -> dict[str, Decision]:
        if name == "exclude-broken":
            return {key: Decision("exclude") for key in self.findings.broken}
        return {key: Decision("keep" if position == 0 else "exclude")
                for group in self.findings.groups for position, key in enumerate(group)}

    def counts(self) -> Counts:
        return Counts(items=len(self._reasons), decided=len(self.decisions()))


def _rank(kind: str) -> int:
    """Where a kind sorts on the page (every "quality: ..." check where "quality" does)."""
    kind = kind.split(":")[0]
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def default_corrections(dataset: ImageDataset) -> Path:
    """``corrections-<dataset name>.csv`` in the current folder."""
    return Path(f"corrections-{slug(dataset.source, 'dataset')}.csv")


def open_data_review(data: str | Path, *, run: str | Path | None = None, corrections: str | Path | None = None,
                     near_duplicates: bool = False, outliers: bool = False, embedding_model: str | Path | None = None,
                     neighbours: bool = True, workers: int | None = None) -> DataReview:
    """Inspect ``data`` (and read ``run``'s likely label errors and worst mistakes) into a review source.

    Decisions go to ``corrections`` (default ``corrections-<dataset name>.csv``
    in the current folder). Inspect's own files are written to a temporary
    folder: the page is the report.
    """
    from imgclf import api

    dataset = load_source(data)
    index = ImageIndex(dataset)
    from_run = run_findings(run, index, neighbours) if run is not None else []
    with tempfile.TemporaryDirectory(prefix="imgclf-review-") as scratch:
        inspected = api.inspect(data, out=scratch, near_duplicates=near_duplicates, outliers=outliers, workers=workers,
                                embedding_model=embedding_model or api.DEFAULT_EMBEDDING_MODEL)
    findings = inspect_findings(index, inspected.report.to_json())
    findings.items += from_run
    target = Path(corrections) if corrections else default_corrections(dataset)
    if target.exists():
        corrections_file.read(target)  # a malformed file is refused before the page opens, not on the first click
    return DataReview(index, findings, dataset.classes, target)
