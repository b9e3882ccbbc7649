"""What data a run saw: every image's path, labels, split and content hash, and a short summary of a set of them.

A run keeps its labels and splits in ``split.csv`` and its images' content
hashes (the decode cache's, so free) in ``data_manifest.csv``
(:meth:`imgclf.runs.RunDirectory.write_data_manifest`); this joins the two.
An update also writes the images it added as ``added_data.csv`` in the new
run, and the lineage names that file's sha256, so the exact data behind a
version can be checked later.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

from imgclf.data.sources import MULTILABEL_SEPARATOR, ImageDataset
from imgclf.files import PATH_BYTES, write_text_atomic
from imgclf.paths import absolute_path
from imgclf.runs import RunDirectory

ADDED_FILE = "added_data.csv"


@dataclass(frozen=True)
class ManifestRow:
    """One image of a run: labels, split and content hash ("" when unknown: a run from before the manifest)."""

    path: str
    labels: tuple[str, ...]
    split: str
    digest: str


def run_manifest(run: RunDirectory) -> dict[str, ManifestRow]:
    """Every image of ``run``, by absolute path."""
    digests = run.read_data_manifest()
    rows = {}
    for item in run.read_split().items:
        path = absolute_path(item.path)
        rows[path] = ManifestRow(path, tuple(item.labels), item.split or "", digests.get(path, ""))
    return rows


def write_added(run: RunDirectory, added: ImageDataset) -> dict[str, Any]:
    """Write ``added_data.csv`` (the images an update added, with their hashes) in ``run``; its summary."""
    digests = run.read_data_manifest()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "labels", "split", "blake2b"])
    for item in sorted(added.items, key=lambda item: absolute_path(item.path)):
        path = absolute_path(item.path)
        writer.writerow([path, MULTILABEL_SEPARATOR.join(item.labels), item.split or "", digests.get(path, "")])
    text = buffer.getvalue()
    write_text_atomic(run.path / ADDED_FILE, text)
    classes = Counter(label for item in added.items for label in item.labels)
    return {"images": len(added.items), "classes": dict(sorted(classes.items())), "manifest": ADDED_FILE,
            "sha256": hashlib.sha256(text.encode("utf-8", errors=PATH_BYTES)).hexdigest()}

