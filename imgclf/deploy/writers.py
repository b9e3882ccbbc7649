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

from imgclf.deploy.predict import PredictionRow
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, atomic_path

FORMATS = ("csv", "json", "jsonl")


def row_record(row: PredictionRow) -> dict[str, Any]:
    """The JSON form of one prediction (also what the REST API will answer); a multi-label one adds ``labels``."""
    record = {"path": row.path, "prediction": row.prediction or None, "confidence": row.confidence,
              "top_k": [{"class": name, "probability": probability} for name, probability in row.top],
              "error": row.error or None}
    if row.labels is not None:
        record["labels"] = list(row.labels)
    return record


@contextlib.contextmanager
def open_writer(output_format: str, out: Path | None, classes: list[str], multilabel: bool = False
                ) -> Iterator[Callable[[PredictionRow], None]]:
    """A ``write(row)`` function for ``output_format``; the file is complete when the block exits cleanly.

    A multi-label model's CSV has a ``labels`` column (the chosen labels as
    ``a|b``, the manifest's own spelling) instead of prediction and confidence.
    """
    if output_format not in FORMATS:
        raise ImgclfError(f"--format '{output_format}' is not one of {', '.join(FORMATS)}")
    if out is None:
        write, finish = _writer(output_format, sys.stdout, classes, multilabel)
        yield write
        finish()
        return
    with atomic_path(out) as partial, open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        write, finish = _writer(output_format, handle, classes, multilabel)
        yield write
        finish()


def _writer(output_format: str, handle: IO[str], classes: list[str], multilabel: bool
            ) -> tuple[Callable[[PredictionRow], None], Callable[[], None]]:
    if output_format == "csv":
        table = csv.writer(handle)
        table.writerow(["path", *(["labels"] if multilabel else ["prediction", "confidence"]), *classes, "error"])

        def write_csv(row: PredictionRow) -> None:
            probabilities = [] if row.probabilities is None else [f"{value:.6f}" for value in row.probabilities]
            confidence = "" if row.confidence is None else f"{row.confidence:.6f}"
            answer = [row.prediction] if multilabel else [row.prediction, confidence]
            table.writerow([row.path, *answer, *(probabilities or [""] * len(classes)), row.error])

        return write_csv, lambda: None
    if output_format == "jsonl":
        return lambda row: handle.write(json.dumps(row_record(row)) + "\n"), lambda: None
    state = {"first": True}

    def write_json(row: PredictionRow) -> None:
        handle.write(("[\n" if state["first"] else ",\n") + json.dumps(row_record(row)))
        state["first"] = False

    def finish_json() -> None:
        handle.write("[]\n" if state["first"] else "\n]\n")

    return write_json, finish_json
