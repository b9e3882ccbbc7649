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

from imgclf.data.corrections import apply, read
from imgclf.data.sources import ImageDataset
from imgclf.errors import ImgclfError
from imgclf.files import write_folder_atomic

MARKER = ".imgclf-export"


@dataclass
class Exported:
    """What ``--export`` wrote: the folder, files linked and copied, and files the corrections excluded."""

    out: Path
    linked: int
    copied: int
    excluded: int


def export_corrected(dataset: ImageDataset, corrections: Path, out: Path) -> Exported:
    """Write the corrected dataset to ``out`` as class folders (see the module docstring)."""
    if dataset.multilabel:
        raise ImgclfError("--export writes one class folder per image; multi-label data has no such layout; "
                          "train on it with --corrections instead")
    _check_target(dataset, out)
    if not corrections.is_file():
        raise ImgclfError(f"--corrections {corrections} does not exist; decide on the review page first "
                          f"(imgclf review {dataset.source}) or give the corrections CSV")
    fixed, report = apply(dataset, read(corrections))
    items, excluded = fixed.items, len(report.excluded)
    counts = Counter[str]()

    def fill(folder: Path) -> None:
        (folder / MARKER).write_text(f"exported from {dataset.source} with the corrections in {corrections}\n")
        taken: set[Path] = set()
        for item in items:
            target = _free_name(folder.joinpath(*([item.split] if item.split else []), *item.label.split("/"),
                                                item.path.name), taken)
            if not target.resolve().is_relative_to(folder.resolve()):  # a hand-written label such as ../..
                raise ImgclfError(f"--export: the class {item.label!r} of {item.path} would be written outside "
                                  f"{out}; correct the label in {corrections}")
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
