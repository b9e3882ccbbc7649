"""``imgclf diff RUN_A RUN_B``: what changed in the data between two runs, and what it did to each class.

Images are matched by path. An image in B only is added, in A only removed;
one in both is relabelled when its labels differ, moved when its split
differs and changed when its content hash differs (both runs must have
``data_manifest.csv``; older runs have no hashes and show no changed
content). The per-class figures are each run's held-out evaluation
(``evaluation/metrics.json``, written with its report): recall per class,
or average precision per label for a multi-label run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import ImgclfError
from imgclf.lifecycle.manifest import ManifestRow, run_manifest
from imgclf.runs import RunDirectory

METRICS_FILE = Path("evaluation") / "metrics.json"


@dataclass(frozen=True)
class ClassDelta:
    """One class's figure in each run (None where the run has no such class or no evaluation)."""

    name: str
    metric: str
    a: float | None
    b: float | None

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class RunDiff:
    """The data and per-class differences from run ``a`` to run ``b``."""

    a: Path
    b: Path
    added: list[ManifestRow] = field(default_factory=list)
    removed: list[ManifestRow] = field(default_factory=list)
    relabelled: list[tuple[ManifestRow, ManifestRow]] = field(default_factory=list)
    moved: list[tuple[ManifestRow, ManifestRow]] = field(default_factory=list)
    changed: list[tuple[ManifestRow, ManifestRow]] = field(default_factory=list)
    classes: list[ClassDelta] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def pairs(rows: list[tuple[ManifestRow, ManifestRow]]) -> list[dict[str, Any]]:
            return [{"path": old.path, "a": asdict(old), "b": asdict(new)} for old, new in rows]

        return {"a": str(self.a), "b": str(self.b),
                "added": [asdict(row) for row in self.added], "removed": [asdict(row) for row in self.removed],
                "relabelled": pairs(self.relabelled), "moved": pairs(self.moved), "changed": pairs(self.changed),
                "classes": [{**asdict(delta), "change": delta.change} for delta in self.classes]}


def diff_runs(a: str | Path, b: str | Path) -> RunDiff:
    """The differences from run ``a`` to run ``b`` (see the module's rules)."""
    first, second = _run(Path(a)), _run(Path(b))
    old, new = run_manifest(first), run_manifest(second)
    result = RunDiff(first.path, second.path)
    result.added = [new[path] for path in sorted(new.keys() - old.keys())]
    result.removed = [old[path] for path in sorted(old.keys() - new.keys())]
    for path in sorted(old.keys() & new.keys()):
        before, after = old[path], new[path]
        if set(before.labels) != set(after.labels):
            result.relabelled.append((before, after))
        if before.split != after.split:
            result.moved.append((before, after))
        if before.digest and after.digest and before.digest != after.digest:
            result.changed.append((before, after))
    result.classes = class_deltas(_metrics(first), _metrics(second))
    return result


def class_deltas(a: dict[str, Any], b: dict[str, Any]) -> list[ClassDelta]:
    """Each class of either run with its recall (or AP) in both, in name order."""
    first, second = _per_class(a), _per_class(b)
    metric = "average precision" if a.get("multilabel") or b.get("multilabel") else "recall"
    return [ClassDelta(name, metric, first.get(name), second.get(name)) for name in sorted(first.keys() | second.keys())]


def _per_class(metrics: dict[str, Any]) -> dict[str, float | None]:
    if "per_label" in metrics:
        return {name: row.get("average_precision") for name, row in metrics["per_label"].items()}
    return {name: row.get("recall") for name, row in metrics.get("per_class", {}).items()}


def _run(path: Path) -> RunDirectory:
    run = RunDirectory(path)
    if not run.has_split():
        raise ImgclfError(f"{path} is not an imgclf run (no split.csv); give two run directories that imgclf train "
                          "or imgclf update wrote")
    return run


def _metrics(run: RunDirectory) -> dict[str, Any]:
    """The run's held-out evaluation, or nothing (a run without a report has no per-class figures)."""
    try:
        metrics = json.loads((run.path / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}
