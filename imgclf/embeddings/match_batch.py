"""Batch matching: thousands of new products to a suggestions CSV, streamed, resumable after a kill.

Products are embedded (through the embedding store, so photos seen before
cost nothing) and matched ``batch_size`` at a time, and each part is
written atomically to a folder beside the output
(``.suggestions.csv.parts/``). A rerun with the same queries and options
skips the parts already written; the last step joins them into the output
(atomically) and removes the folder. One output row per product: the
suggestion, its confidence and level, the top categories with their
probabilities, the evidence, the closest catalogue item, and any problem
(an unreadable photo is reported and the name alone is used).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.console import progress_bar
from imgclf.data.hierarchy import level_columns
from imgclf.embeddings.match import Queries
from imgclf.embeddings.similarity import normalise
from imgclf.embeddings.suggest import RANKED, CatalogMatcher, Suggestion
from imgclf.embeddings.tables import IMAGE_COLUMN, read_items
from imgclf.errors import ImgclfError
from imgclf.files import write_text_atomic

log = logging.getLogger(__name__)


DEFAULT_BATCH_SIZE = 512
META_FILE = "meta.json"


@dataclass
class BatchSummary:
    out: Path
    products: int
    resumed: int  # products already matched by an interrupted run
    unsure: int  # below --min-confidence even at the top level
    failed: int  # no usable photo and no name
    seconds: float
    scoring: str

    @property
    def rate(self) -> float:
        return (self.products - self.resumed) / self.seconds if self.seconds > 0 else 0.0


def read_queries(path: Path) -> list[dict[str, str]]:
    """Rows of the new-products CSV (or every image of a folder); each needs a photo, a name or both."""
    rows = read_items(path, ())
    columns = set(rows[0])
    if not columns & {IMAGE_COLUMN, "name"}:
        raise ImgclfError(f"{path}: no 'image' or 'name' column; give each new product a photo, a name or both "
                          f"(found: {', '.join(sorted(columns))})")
    for line, row in enumerate(rows, start=2):
        if not row.get(IMAGE_COLUMN) and not row.get("name"):
            raise ImgclfError(f"{path}, line {line}: neither image nor name; each new product needs one or both")
    return rows


def match_batch(matcher: CatalogMatcher, queries_path: Path, out: Path, batch_size: int = DEFAULT_BATCH_SIZE
                ) -> BatchSummary:
    """Match every product of ``queries_path`` and write ``out``; resumes an interrupted run's parts."""
    if batch_size < 1:
        raise ImgclfError(f"--batch-size {batch_size} must be at least 1")
    started = time.perf_counter()
    rows = read_queries(queries_path)
    extra = [column for column in rows[0] if column not in (IMAGE_COLUMN, "name")]
    parts = out.with_name(f".{out.name}.parts")
    meta = {"queries": hashlib.sha256(queries_path.read_bytes()).hexdigest() if queries_path.is_file()
            else [row[IMAGE_COLUMN] for row in rows], "scoring": matcher.scoring, "k": matcher.k,
            "min_confidence": matcher.min_confidence, "image_weight": matcher.image_weight,
            "catalog": matcher.catalog.fingerprint(matcher.embedder.identity), "batch_size": batch_size}
    _prepare_parts(parts, meta)
    chunks = [range(start, min(start + batch_size, len(rows))) for start in range(0, len(rows), batch_size)]
    pending = [number for number in range(len(chunks)) if not _part(parts, number).is_file()]
    done = sum(len(chunks[number]) for number in range(len(chunks)) if number not in pending)
    if done:
        log.info(f"resuming: {done:,} of {len(rows):,} products were matched by an interrupted run")
    header = _header(matcher, extra)
    with progress_bar() as bar:
        task = bar.add_task("Matching", total=len(rows), completed=done)
        for number in pending:
            chunk = [rows[i] for i in chunks[number]]
            lines = _match_chunk(matcher, chunk, extra, [i + 1 for i in chunks[number]], len(header))
            write_text_atomic(_part(parts, number), _csv_text(lines))
            bar.advance(task, len(chunk))
    body = "".join(_part(parts, number).read_text(encoding="utf-8") for number in range(len(chunks)))
    write_text_atomic(out, _csv_text([header]) + body)
    shutil.rmtree(parts, ignore_errors=True)
    written = list(csv.DictReader(io.StringIO(_csv_text([header]) + body)))
    return BatchSummary(out, len(rows), done, sum(row["sure"] == "no" for row in written),
                        sum(bool(row["error"]) and not row["category"] for row in written),
                        time.perf_counter() - started, matcher.scoring)


def _prepare_parts(parts: Path, meta: dict) -> None:
    """Keep an interrupted run's parts when it matched the same queries the same way; else start afresh."""
    previous = None
    try:
        previous = json.loads((parts / META_FILE).read_text())
    except (OSError, ValueError):
        pass
    if previous == meta:
        return
    if parts.exists():
        log.warning("starting over: the queries, the catalogue or the options changed since the interrupted run")
        shutil.rmtree(parts)
    write_text_atomic(parts / META_FILE, json.dumps(meta))


def _part(parts: Path, number: int) -> Path:
    return parts / f"part-{number:06d}.csv"


def _header(matcher: CatalogMatcher, extra: list[str]) -> list[str]:
    levels = level_columns(matcher.hierarchy.depth)
    ranked = [f"top{rank}{suffix}" for rank in range(1, RANKED + 1) for suffix in ("", "_probability")]
    return ["query", IMAGE_COLUMN, "name", *extra, "category", "confidence", "sure", *levels, *ranked,
            "image_similarity", "name_token_set", "name_ngrams", "closest_name", "closest_category", "closest_image",
            "scoring", "error"]


def _match_chunk(matcher: CatalogMatcher, chunk: list[dict[str, str]], extra: list[str],
                 numbers: list[int], width: int) -> list[list[str]]:
    """Output rows for ``chunk``; a product with neither a usable photo nor a name gets only its problem."""
    vectors = np.zeros((len(chunk), matcher.reference.vectors.shape[1]), dtype=np.float32)
    problems = [""] * len(chunk)
    with_photo = [row for row, item in enumerate(chunk) if item.get(IMAGE_COLUMN)]
    embedded = matcher.embedder.embed_files([Path(chunk[row][IMAGE_COLUMN]) for row in with_photo], progress=False)
    for row, vector, error in zip(with_photo, normalise(embedded.vectors), embedded.errors):
        if error:
            problems[row] = f"photo skipped ({error})" + ("; matched by name" if chunk[row].get("name") else "")
        else:
            vectors[row] = vector
    queries = Queries(vectors, [item.get("name", "") for item in chunk])
    usable = np.flatnonzero(queries.has_image | queries.has_name)
    suggestions: dict[int, Suggestion] = dict(zip(usable.tolist(), matcher.suggest(queries.rows(usable))))
    lines = []
    for row, (item, number) in enumerate(zip(chunk, numbers)):
        fixed = [str(number), item.get(IMAGE_COLUMN, ""), item.get("name", ""), *(item.get(c, "") for c in extra)]
        suggestion = suggestions.get(row)
        cells = _suggestion_cells(matcher, suggestion) if suggestion else [""] * (width - len(fixed) - 1)
        lines.append(fixed + cells + [problems[row]])
    return lines


def _suggestion_cells(matcher: CatalogMatcher, suggestion: Suggestion) -> list[str]:
    levels = [] if matcher.hierarchy.is_flat else [
        cell for level in suggestion.levels for cell in (level.label, f"{level.probability:.4f}")]
    # a shallower leaf leaves the deeper levels empty; flat categories have no level columns at all
    levels += [""] * (len(level_columns(matcher.hierarchy.depth)) - len(levels))
    ranked = [cell for label, probability in suggestion.ranking for cell in (label, f"{probability:.4f}")]
    ranked += [""] * (2 * RANKED - len(ranked))
    closest = suggestion.matches[0].item if suggestion.matches else {}
    evidence = [f"{value:.4f}" if value == value else "" for value in suggestion.evidence.values()]  # NaN: none
    return [suggestion.category, f"{suggestion.confidence:.4f}", "yes" if suggestion.sure else "no", *levels,
            *ranked, *evidence, closest.get("name", ""), closest.get("category", ""), closest.get(IMAGE_COLUMN, ""),
            matcher.scoring]


def _csv_text(lines: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(lines)
    return buffer.getvalue()
