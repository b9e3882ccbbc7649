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
    """The JSON form of one prediction (also what the REST API answers).

    A hierarchical model's (``depth`` levels) adds ``level1``,
    ``level1_confidence``, ...; a multi-label one adds ``labels``.
    """
    record = {"path": row.path, "prediction": row.prediction or None, "confidence": row.confidence,
              **level_cells(row, depth),
              "top_k": [{"class": name, "probability": probability} for name, probability in row.top],
              "error": row.error or None}
    if row.labels is not None:
        record["labels"] = list(row.labels)
    return record


def level_cells(row: PredictionRow, depth: int) -> dict[str, Any]:
    """The row's path by level under :func:`level_columns`; levels below a shallow leaf (or an error) are None."""
    cells: dict[str, Any] = dict.fromkeys(level_columns(depth))
    for level in row.levels:
        cells[f"level{level.depth}"] = level.label
        cells[f"level{level.depth}_confidence"] = level.probability
    return cells


@contextlib.contextmanager
def open_writer(output_format: str, out: Path | None, classes: list[str], multilabel: bool = False
                ) -> Iterator[Callable[[PredictionRow], None]]:
    """A ``write(row)`` function for ``output_format``; the file is complete when the block exits cleanly.

    A multi-label model's CSV has a ``labels`` column (the chosen labels as
    ``a|b``, the manifest's own spelling) instead of prediction and confidence.
    """
    if output_format not in FORMATS:
        raise ImgclfError(f"--format '{output_format}' is not one of {', '.join(FORMATS)}")
    with _output(out) as handle:
        write, finish = _writer(output_format, handle, classes, multilabel)
        yield write
        finish()


def part_format(output_format: str) -> str:
    """The format a distributed run's parts are written in: JSON's as JSON Lines, one record a line, to join."""
    return "jsonl" if output_format == "json" else output_format


def join_parts(output_format: str, parts: list[Path], out: Path | None) -> tuple[int, int]:
    """Write the rows of ``parts`` (in :func:`part_format`, in order) as one ``output_format`` output.

    Returns (rows, rows with an error). Of the parts' CSV header lines only
    the first is kept.
    """
    rows = errors = 0
    with _output(out) as handle:
        if output_format == "csv":
            table = csv.writer(handle)
            for number, part in enumerate(parts):
                with open(part, newline="", encoding="utf-8", errors=PATH_BYTES) as source:
                    records = csv.reader(source)
                    header = next(records)
                    if not number:
                        table.writerow(header)
                    error_column = header.index("error")
                    for record in records:
                        table.writerow(record)
                        rows += 1
                        errors += bool(record[error_column])
            return rows, errors
        add, finish = (lambda text: handle.write(text + "\n"), lambda: None) if output_format == "jsonl" \
            else _json_array(handle)
        for part in parts:
            with open(part, encoding="utf-8", errors=PATH_BYTES) as source:
                for line in source:
                    add(line.rstrip("\n"))
                    rows += 1
                    errors += bool(json.loads(line)["error"])
        finish()
    return rows, errors


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[IO[str]]:
    """stdout, or ``out`` written atomically (complete when the block exits cleanly)."""
    if out is None:
        yield sys.stdout
        return
    with atomic_path(out) as partial, open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        yield handle


def _writer(output_format: str, handle: IO[str], classes: list[str], multilabel: bool
            ) -> tuple[Callable[[PredictionRow], None], Callable[[], None]]:
    tree = None if multilabel else label_tree(classes)  # multi-label data is never read as a tree
    depth = tree.depth if tree else 0
    if output_format == "csv":
        table = csv.writer(handle)
        answer_columns = ["labels"] if multilabel else ["prediction", "confidence"]
        table.writerow(["path", *answer_columns, *level_columns(depth), *classes, "error"])

        def write_csv(row: PredictionRow) -> None:
            probabilities = [] if row.probabilities is None else [f"{value:.6f}" for value in row.probabilities]
            confidence = "" if row.confidence is None else f"{row.confidence:.6f}"
            levels = ["" if value is None else f"{value:.6f}" if isinstance(value, float) else value
                      for value in level_cells(row, depth).values()]
            answer = [row.prediction] if multilabel else [row.prediction, confidence]
            table.writerow([row.path, *answer, *levels, *(probabilities or [""] * len(classes)), row.error])

        return write_csv, lambda: None
    if output_format == "jsonl":
        def write_jsonl(row: PredictionRow) -> None:
            handle.write(json.dumps(row_record(row, depth)) + "\n")

        return write_jsonl, lambda: None
    add, finish = _json_array(handle)
    return lambda row: add(json.dumps(row_record(row, depth))), finish


def _json_array(handle: IO[str]) -> tuple[Callable[[str], None], Callable[[], None]]:
    """(add one JSON record's text, close the array): one record a line, so a JSON file streams like JSONL."""
    state = {"first": True}

    def add(text: str) -> None:
        handle.write(("[\n" if state["first"] else ",\n") + text)
        state["first"] = False

    def finish() -> None:
        handle.write("[]\n" if state["first"] else "\n]\n")

    return add, finish
