"""Write prediction rows as CSV, JSON or JSON Lines, streamed, to a file or stdout.

A file is written under a temporary name and renamed when the last row is
in, so an interrupted run never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from imgclf.data.hierarchy import label_tree, level_columns
from imgclf.deploy.predict import PredictionRow
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, atomic_path

FORMATS = ("csv", "json", "jsonl")


def row_record(row: PredictionRow, depth: int = 0) -> dict[str, Any]:
    """The JSON form of one prediction; a hierarchical model's (``depth`` levels) adds ``level1``, ``level1_confidence``, ..."""
    return {"path": row.path, "prediction": row.prediction or None, "confidence": row.confidence,
            **level_cells(row, depth),
            "top_k": [{"class": name, "probability": probability} for name, probability in row.top],
            "error": row.error or None}


def level_cells(row: PredictionRow, depth: int) -> dict[str, Any]:
    """The row's path by level under :func:`level_columns`; levels below a shallow leaf (or an error) are None."""
    cells: dict[str, Any] = dict.fromkeys(level_columns(depth))
    for level in row.levels:
        cells[f"level{level.depth}"] = level.label
        cells[f"level{level.depth}_confidence"] = level.probability
    return cells


@contextlib.contextmanager
def open_writer(output_format: str, out: Path | None, classes: list[str]) -> Iterator[Callable[[PredictionRow], None]]:
    """A ``write(row)`` function for ``output_format``; the file is complete when the block exits cleanly."""
    if output_format not in FORMATS:
        raise ImgclfError(f"--format '{output_format}' is not one of {', '.join(FORMATS)}")
    if out is None:
        write, finish = _writer(output_format, sys.stdout, classes)
        yield write
        finish()
        return
    with atomic_path(out) as partial, open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        write, finish = _writer(output_format, handle, classes)
        yield write
        finish()


def _writer(output_format: str, handle: IO[str], classes: list[str]
            ) -> tuple[Callable[[PredictionRow], None], Callable[[], None]]:
    tree = label_tree(classes)
    depth = tree.depth if tree else 0
    if output_format == "csv":
        table = csv.writer(handle)
        table.writerow(["path", "prediction", "confidence", *level_columns(depth), *classes, "error"])

        def write_csv(row: PredictionRow) -> None:
            probabilities = [] if row.probabilities is None else [f"{value:.6f}" for value in row.probabilities]
            confidence = "" if row.confidence is None else f"{row.confidence:.6f}"
            levels = ["" if value is None else f"{value:.6f}" if isinstance(value, float) else value
                      for value in level_cells(row, depth).values()]
            table.writerow([row.path, row.prediction, confidence, *levels, *(probabilities or [""] * len(classes)),
                            row.error])

        return write_csv, lambda: None
    if output_format == "jsonl":
        return lambda row: handle.write(json.dumps(row_record(row, depth)) + "\n"), lambda: None
    state = {"first": True}

    def write_json(row: PredictionRow) -> None:
        handle.write(("[\n" if state["first"] else ",\n") + json.dumps(row_record(row, depth)))
        state["first"] = False

    def finish_json() -> None:
        handle.write("[]\n" if state["first"] else "\n]\n")

    return write_json, finish_json
