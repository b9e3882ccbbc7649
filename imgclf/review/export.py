"""``imgclf review DATA --export DIR``: a corrected copy of a dataset as class folders, for tools that want folders.

Corrections (exclude, relabel, class renames) are applied on top of the
source; each remaining file appears at ``DIR/<split>/<label>/<name>`` (no
split folder for unsplit data) as a hard link where the file system allows,
a copy otherwise, so the copy costs no space on the same disk. The folder is
written beside its final name and swapped in whole, and an existing folder is
replaced only when it is an earlier export (it carries a marker file).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from imgclf.data.sources import ImageDataset, Item
from imgclf.errors import ImgclfError
from imgclf.files import write_folder_atomic
from imgclf.review.corrections_file import read_corrections

MARKER = ".imgclf-export"


@dataclass
class Exported:
    """What ``--export`` wrote: the folder, files linked and copied, and files the corrections excluded."""

    out: Path
    linked: int
    copied: int
    excluded: int


def corrected_items(dataset: ImageDataset, corrections: Path) -> tuple[list[Item], int]:
    """The items with the corrections applied, and how many were excluded.

    TODO(merge): the quality branch's ``imgclf.data.corrections`` applies corrections for training; use it here
    once it lands, so that export and train read a corrections file the same way.
    """
    rows = read_corrections(corrections)
    renames = {row["path"]: row["label"] for row in rows.values() if row["action"] == "rename"}
    kept, excluded = [], 0
    for item in dataset.items:
        row = rows.get(str(item.path), {})
        if row.get("action") == "exclude":
            excluded += 1
            continue
        labels = (row["label"],) if row.get("action") == "relabel" else item.labels
        kept.append(Item(item.path, tuple(renames.get(label, label) for label in labels), item.split))
    return kept, excluded


def export_corrected(dataset: ImageDataset, corrections: Path, out: Path) -> Exported:
    """Write the corrected dataset to ``out`` as class folders (see the module docstring)."""
    if dataset.multilabel:
        raise ImgclfError("--export writes one class folder per image; multi-label data has no such layout; "
                          "train on it with --corrections instead")
    _check_target(dataset, out)
    items, excluded = corrected_items(dataset, corrections)
    counts = Counter[str]()

    def fill(folder: Path) -> None:
        (folder / MARKER).write_text(f"exported from {dataset.source} with the corrections in {corrections}\n")
        taken: set[Path] = set()
        for item in items:
            target = _free_name(folder.joinpath(*([item.split] if item.split else []), *item.label.split("/"),
                                                item.path.name), taken)
            target.parent.mkdir(parents=True, exist_ok=True)
            counts[_link_or_copy(item.path, target)] += 1

    write_folder_atomic(out, fill)
    return Exported(out, counts["linked"], counts["copied"], excluded)


def _check_target(dataset: ImageDataset, out: Path) -> None:
    source = Path(dataset.source).resolve()
    target = out.resolve()
    if target == source or source in target.parents:
        raise ImgclfError(f"--export {out} is inside the dataset {dataset.source}; give a folder outside it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ImgclfError(f"--export {out} exists and is not an earlier export; give a new folder (it is replaced "
                          f"whole)")


def _free_name(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``name-2.ext``, ``name-3.ext``... when two sources' files of one class share a name."""
    candidate, number = target, 1
    while candidate in taken:
        number += 1
        candidate = target.with_name(f"{target.stem}-{number}{target.suffix}")
    taken.add(candidate)
    return candidate


def _link_or_copy(source: Path, target: Path) -> str:
    try:
        os.link(source, target)
        return "linked"
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
        return "copied"
