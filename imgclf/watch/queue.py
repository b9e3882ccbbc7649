"""The review queue: which logged predictions a person should look at, reading them, and recording the decisions.

A prediction enters the queue (its row gets a ``queue_reason`` and
``review_status = 'pending'``) when it is doubtful: its top probability is
below ``--review-below``, the bundle's reference calls its embedding novel,
or it was drawn by the ``--audit-rate`` sample (which measures accuracy on
answers the model was sure of, too). The review page lists
:func:`pending` items, records each decision with :func:`decide` (confirm,
correct to an existing or a new class, skip) and writes the labels with
:func:`export_labels`: a ``path,label`` CSV of the stored image copies, the
manifest ``imgclf train`` and ``imgclf update --add`` read.
"""

from __future__ import annotations

import csv
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import sqlalchemy as sa

from imgclf.deploy.bundle import BundleInfo
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, atomic_path
from imgclf.watch.schema import PREDICTIONS, migrate, open_engine

Log = Union[str, Path, sa.engine.Engine]  # a --log value, or the engine open_log gives
PENDING = "pending"
ACTIONS = {"confirm": "confirmed", "correct": "corrected", "skip": "skipped"}  # a decision -> the status it leaves
LOW_CONFIDENCE, NOVEL, AUDIT = "low-confidence", "novel", "audit"


def default_review_below(info: BundleInfo) -> float:
    """``--review-below``'s default: a binary model's decision threshold when it has one, else 0.5."""
    if not info.multilabel and len(info.classes) == 2 and info.thresholds:
        positive = info.positive if info.positive in info.thresholds else next(iter(info.thresholds))
        return float(info.thresholds[positive])
    return 0.5


@dataclass
class ReviewPolicy:
    """When a prediction is doubtful: below ``below``, novel, or drawn at ``audit_rate`` (the draw is ``rng``'s)."""

    below: float
    audit_rate: float = 0.0
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.below <= 1.0:
            raise ImgclfError(f"--review-below must be a probability between 0 and 1, got {self.below}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ImgclfError(f"--audit-rate must be a share between 0 and 1, got {self.audit_rate}")
        self.rng = self.rng or random.Random()

    def reason(self, top_probability: float | None, novel: bool | None) -> str | None:
        """The row's ``queue_reason``: the reasons that hold, comma-separated; None when the answer is not doubtful."""
        reasons = [name for name, holds in ((LOW_CONFIDENCE, top_probability is not None and top_probability < self.below),
                                            (NOVEL, bool(novel)))
                   if holds]
        if self.audit_rate and self.rng.random() < self.audit_rate:  # type: ignore[union-attr]  # set in __post_init__
            reasons.append(AUDIT)
        return ",".join(reasons) or None


@dataclass
class QueueItem:
    """One prediction waiting for (or given) a person's decision."""

    id: int
    created_at: float
    model_version: str
    image_name: str
    image_path: str | None  # the stored copy (None without --log-images, or when it was dropped)
    prediction: str
    confidence: float | None
    top_k: list[tuple[str, float]]
    queue_reason: str
    novelty: float | None
    review_status: str
    review_label: str | None


def _item(row: Any) -> QueueItem:
    path = row.image_path if row.image_path and Path(row.image_path).is_file() else None
    return QueueItem(id=row.id, created_at=row.created_at, model_version=row.model_version,
                     image_name=row.image_name, image_path=path, prediction=row.prediction,
                     confidence=row.confidence, top_k=[(label, p) for label, p in json.loads(row.top_k)],
                     queue_reason=row.queue_reason, novelty=row.novelty, review_status=row.review_status,
                     review_label=row.review_label)


def open_log(log: str | Path) -> sa.engine.Engine:
    """The log's engine, its schema brought up to date: open it once and pass it to the functions below (a path or
    URL works too, opened and closed per call)."""
    engine = open_engine(log)
    migrate(engine)
    return engine


@contextmanager
def _connection(log: str | Path | sa.engine.Engine, write: bool = False) -> Iterator[Any]:
    owned = not isinstance(log, sa.engine.Engine)
    engine = log if isinstance(log, sa.engine.Engine) else open_log(log)
    try:
        with engine.begin() if write else engine.connect() as connection:
            yield connection
    finally:
        if owned:
            engine.dispose()


def pending(log: Log, limit: int = 50, after_id: int = 0) -> list[QueueItem]:
    """Up to ``limit`` items still waiting for a decision, oldest first, with ids above ``after_id`` (paging)."""
    table = PREDICTIONS
    query = (sa.select(table).where(table.c.review_status == PENDING, table.c.id > after_id)
             .order_by(table.c.id).limit(limit))
    with _connection(log) as connection:
        return [_item(row) for row in connection.execute(query)]


def queue_size(log: Log) -> int:
    """How many items wait for a decision."""
    query = sa.select(sa.func.count()).select_from(PREDICTIONS).where(PREDICTIONS.c.review_status == PENDING)
    with _connection(log) as connection:
        return int(connection.execute(query).scalar() or 0)


def decide(log: Log, item_id: int, action: str, label: str | None = None) -> QueueItem:
    """Record a reviewer's decision on a queued item: ``confirm`` the answer, ``correct`` it to ``label`` (an
    existing class or a new one), or ``skip`` it; the item as it is now.

    A decision may be changed later (the last one counts); an item that
    never entered the queue cannot be decided.
    """
    if action not in ACTIONS:
        raise ImgclfError(f"decision '{action}' is not one of {', '.join(ACTIONS)}")
    if action == "correct" and not (label or "").strip():
        raise ImgclfError("correct needs the right class: give its name (an existing class or a new one)")
    table = PREDICTIONS
    with _connection(log, write=True) as connection:
        row = connection.execute(sa.select(table).where(table.c.id == item_id)).first()
        if row is None or row.review_status is None:
            raise ImgclfError(f"prediction {item_id} is not in the review queue; pick one that pending() lists")
        chosen = {"confirm": row.prediction, "correct": (label or "").strip(), "skip": None}[action]
        connection.execute(table.update().where(table.c.id == item_id).values(
            review_status=ACTIONS[action], review_label=chosen, reviewed_at=time.time()))
        return _item(connection.execute(sa.select(table).where(table.c.id == item_id)).one())


def undecide(log: Log, item_id: int) -> None:
    """Take back the decision on a queued item: it is pending again (a review page's undo)."""
    table = PREDICTIONS
    with _connection(log, write=True) as connection:
        connection.execute(table.update().where(table.c.id == item_id, table.c.review_status.is_not(None))
                           .values(review_status=PENDING, review_label=None, reviewed_at=None))


def statuses(log: Log, item_ids: list[int]) -> dict[int, tuple[str, str | None, float | None]]:
    """(review_status, review_label, reviewed_at) of the queued items among ``item_ids``, read now."""
    table = PREDICTIONS
    query = (sa.select(table.c.id, table.c.review_status, table.c.review_label, table.c.reviewed_at)
             .where(table.c.id.in_(item_ids), table.c.review_status.is_not(None)))
    with _connection(log) as connection:
        return {row.id: (row.review_status, row.review_label, row.reviewed_at) for row in connection.execute(query)}


def reviewed(log: Log) -> list[QueueItem]:
    """Every item a reviewer confirmed or corrected, oldest first (what accuracy in production is measured on)."""
    table = PREDICTIONS
    query = sa.select(table).where(table.c.review_status.in_(("confirmed", "corrected"))).order_by(table.c.id)
    with _connection(log) as connection:
        return [_item(row) for row in connection.execute(query)]


@dataclass
class AccuracyWindow:
    """Reviewed answers in one time window (by when they were answered) and how many the reviewer confirmed.

    ``audited`` counts the random sample alone: its accuracy estimates the
    model's on all traffic, while the doubtful items' is lower by design.
    """

    start: float  # Unix time
    reviewed: int
    correct: int
    audited: int
    audited_correct: int


def accuracy_over_time(log: Log, window_s: float = 86400.0) -> list[AccuracyWindow]:
    """Measured accuracy in production: confirmed among confirmed and corrected items, per ``window_s`` window."""
    windows: dict[float, AccuracyWindow] = {}
    for item in reviewed(log):
        start = item.created_at - item.created_at % window_s
        window = windows.setdefault(start, AccuracyWindow(start, 0, 0, 0, 0))
        right, audited = item.review_status == "confirmed", AUDIT in item.queue_reason.split(",")
        window.reviewed += 1
        window.correct += right
        window.audited += audited
        window.audited_correct += right and audited
    return [windows[start] for start in sorted(windows)]


def export_labels(log: Log, csv_path: Path) -> int:
    """Write the confirmed and corrected items with a stored image copy as a ``path,label`` CSV; how many rows.

    The same picture decided twice is written once, with its latest
    decision. Items without a copy (logged without ``--log-images``, or
    dropped by its size cap) cannot be trained on and are left out.
    """
    latest: dict[str, str] = {}
    for item in reviewed(log):
        if item.image_path is not None and item.review_label:
            latest[str(Path(item.image_path).absolute())] = item.review_label
    with atomic_path(csv_path) as partial, partial.open("w", newline="", encoding="utf-8",
                                                        errors=PATH_BYTES) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(sorted(latest.items()))
    return len(latest)
