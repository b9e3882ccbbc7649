"""Inspect's findings about a dataset as review items: broken files, duplicates, leakage, quality, outliers.

Read from inspect's JSON report (``InspectReport.to_json``), so that every
check inspect gains shows up here by its key. Each image is named by its
index in the dataset's items (:class:`ImageIndex`), the only images the page
serves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.data.corrections import path_for
from imgclf.data.inspect import MEANINGS
from imgclf.data.sources import ImageDataset
from imgclf.review.items import Evidence, ReviewItem

# The page shows kinds in this order: what most often costs accuracy first.
KINDS = ("likely label error", "duplicate across labels", "leakage", "near-duplicate", "duplicate", "outlier",
         "quality", "broken file", "worst mistake")  # "quality: blurry" and the other checks sort as "quality"
DUPLICATE_KINDS = {"label-conflict": "duplicate across labels", "leakage": "leakage", "within-split": "duplicate"}


class ImageIndex:
    """The dataset's files by number, each file's number by its path however a report spells it, and its key: the
    path a corrections file names it by (relative to the data folder)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.items = dataset.items
        self.paths = [item.path for item in dataset.items]
        self.keys = [path_for(dataset, path) for path in self.paths]
        self._numbers = {os.path.abspath(path): number for number, path in enumerate(self.paths)}

    def number(self, path: str | Path) -> int | None:
        return self._numbers.get(os.path.abspath(path))

    def label(self, number: int) -> str:
        return "|".join(self.items[number].labels)

    def caption(self, number: int) -> str:
        item = self.items[number]
        return f"{self.label(number)} · {item.split or 'unsplit'} · {item.path.name}"


@dataclass
class Findings:
    """The review items, plus the groups and sets the bulk actions act on (keys are the files' paths)."""

    items: list[ReviewItem] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # same-label copies: the first of each is the one kept
    broken: list[str] = field(default_factory=list)


def inspect_findings(index: ImageIndex, report: dict[str, Any]) -> Findings:
    """Every finding of an inspect report about a file of ``index``."""
    found = Findings()
    for row in report.get("broken", []):
        number = index.number(row["path"])
        if number is not None:
            found.items.append(_item(index, number, "broken file", row.get("reason", "")))
            found.broken.append(index.keys[number])
    groups = [(group["kind"], group["paths"], "identical bytes") for group in report.get("duplicates", [])]
    groups += [(pair["kind"], pair["paths"], f"near-duplicate, similarity {pair['similarity']:.3f}")
               for pair in report.get("near_duplicates") or []]
    for number, (kind, paths, how) in enumerate(groups):
        _add_group(found, index, f"group-{number}", kind, paths, how)
    for row in (report.get("quality") or {}).get("issues", []):
        _add_scored(found, index, row, f"quality: {row['kind']}", MEANINGS.get(row["kind"], row["kind"]))
    for row in (report.get("outliers") or {}).get("issues", []):
        number, nearest = index.number(row["path"]), row.get("nearest_class", "")
        other = bool(nearest) and number is not None and nearest != index.label(number)
        _add_scored(found, index, row, "outlier", f"{MEANINGS['outlier']}; most of its nearest images are {nearest!r}",
                    suggestions=((nearest, None),) if other else ())
    found.groups = _merged(found.groups)
    return found


def _item(index: ImageIndex, number: int, kind: str, reason: str, **more: Any) -> ReviewItem:
    label = index.label(number)
    return ReviewItem(key=index.keys[number], image=number, kind=kind, label=label, answer=label,
                      reason=reason, **more)


def _add_group(found: Findings, index: ImageIndex, name: str, kind: str, paths: list[str], how: str) -> None:
    numbers = [number for number in (index.number(path) for path in paths) if number is not None]
    if len(numbers) < 2:
        return
    shown = DUPLICATE_KINDS.get(kind, kind)
    if shown == "duplicate" and how.startswith("near"):
        shown = "near-duplicate"
    for number in numbers:
        others = tuple(Evidence(other, f"same picture: {index.caption(other)}") for other in numbers if other != number)
        found.items.append(_item(index, number, shown, f"{how} ({len(numbers)} files)", evidence=others, group=name))
    if shown != "duplicate across labels":  # which label is right is for a person to say, not "keep one"
        found.groups.append([index.keys[number] for number in sorted(numbers, key=lambda n: _keep_first(index, n))])


def _keep_first(index: ImageIndex, number: int) -> tuple[int, str]:
    """Which copy "keep one" keeps: a training image before a held-out one (the held-out copy is the leak)."""
    return (0 if index.items[number].split in ("train", None) else 1, str(index.paths[number]))


def _add_scored(found: Findings, index: ImageIndex, row: dict[str, Any], kind: str, reason: str, **more: Any) -> None:
    number = index.number(row.get("path", ""))
    if number is not None:
        score = row.get("score")
        found.items.append(_item(index, number, kind, reason + (f" (score {score:.3g})" if score is not None else ""),
                                 **more))


def _merged(groups: list[list[str]]) -> list[list[str]]:
    """Groups that share a file joined into one (near-duplicate pairs chain), each keeping its first member first."""
    merged: list[list[str]] = []
    for group in groups:
        overlapping = [other for other in merged if set(other) & set(group)]
        joined = [path for other in overlapping for path in other] + group
        merged = [other for other in merged if other not in overlapping] + [list(dict.fromkeys(joined))]
    return merged
