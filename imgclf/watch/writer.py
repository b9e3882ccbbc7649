"""The log's one writer thread: a bounded queue in, batched transactions out, failures counted and never raised.

A request must not wait for a disk or a database server, and must not fail
because of one. So requests only put rows on a bounded queue
(:meth:`LogWriter.submit`, never blocking: a full queue drops the row and
counts it), and one thread takes what has gathered (up to ``batch_rows``,
or what came within ``flush_s``) and writes it in one transaction. A
failing database (read-only folder, full disk, server down) costs the rows
of the failed batches, counted as ``failed``, one warning line, and a fresh
try with the next batch; requests go on. A kill loses the rows still in
the queue and the batch being written, never a committed one (SQLite's WAL
journal; PostgreSQL's own).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from imgclf.errors import one_line
from imgclf.watch.schema import PREDICTIONS, migrate, open_engine

log = logging.getLogger(__name__)

MAINTAIN_EVERY_S = 60.0  # retention runs at most this often (and after the first batch)
REVIEWED = ("confirmed", "corrected")  # rows retention keeps: a person's labels


@dataclass(frozen=True)
class Retention:
    """How much of the log to keep: rows younger than ``max_age_s`` and the newest ``max_rows`` (None: no limit).

    Rows a reviewer confirmed or corrected are kept whatever their age:
    they are labelled data.
    """

    max_age_s: float | None = None
    max_rows: int | None = None


class _Marker:
    """Put on the queue by :meth:`LogWriter.flush` and :meth:`LogWriter.close`: set once what came before is written."""

    def __init__(self, last: bool = False) -> None:
        self.done = threading.Event()
        self.last = last


class LogWriter:
    """Writes prepared rows to the log from one thread; ``prepare`` turns queued items into ``predictions`` rows."""

    def __init__(self, log_target: str | Path, prepare: Callable[[list[Any]], list[dict[str, Any]]], *,
                 retention: Retention = Retention(), max_queue: int = 10_000, batch_rows: int = 256,
                 flush_s: float = 0.5, count: Callable[[str, int], None] = lambda outcome, rows: None,
                 size_of: Callable[[Any], int] = lambda item: 0, max_queue_bytes: int = 256 * 1024 * 1024) -> None:
        self.target = log_target
        self.prepare = prepare
        self.retention = retention
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.count = count
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self.size_of = size_of  # what an item holds in memory (an upload's bytes): the queue holds at most
        self.max_queue_bytes = max_queue_bytes  # max_queue_bytes of them, so big images cannot exhaust memory
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._engine: Any = None
        self._ready = False
        self._warned = False
        self._maintained: float | None = None  # when retention last ran (monotonic); None: not yet
        self._thread = threading.Thread(target=self._run, name="imgclf-log", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Rows queued, not yet written."""
        return self._queue.qsize()

    def submit(self, item: Any) -> None:
        """Queue one row's item; never blocks: with the queue full (rows or bytes) the row is dropped and counted."""
        size = self.size_of(item)
        with self._bytes_lock:
            room = self._queued_bytes + size <= self.max_queue_bytes
            if room:
                try:
                    self._queue.put_nowait(item)
                    self._queued_bytes += size
                except queue.Full:
                    room = False
        if not room:
            self.count("dropped", 1)

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until everything submitted before now is written (or failed); False if not within ``timeout_s``."""
        return self._mark(_Marker(), timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread and release the database."""
        self._mark(_Marker(last=True), timeout_s)
        self._thread.join(timeout_s)
        if self._engine is not None:
            self._engine.dispose()

    def _mark(self, marker: _Marker, timeout_s: float) -> bool:
        if not self._thread.is_alive():
            return False
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            items, markers = self._take()
            if items:
                self._write(items)
            last = any(marker.last for marker in markers)
            if last and self._ready:  # closing: retention once more, so a short run (predict) applies it too
                self._maintained = None
                self._maintain_quietly()
            for marker in markers:
                marker.done.set()
            if last:
                return

    def _take(self) -> tuple[list[Any], list[_Marker]]:
        """The next batch: wait for a first item, then take what comes within ``flush_s``, up to ``batch_rows``."""
        items: list[Any] = []
        markers: list[_Marker] = []
        first = self._queue.get()
        deadline = time.monotonic() + self.flush_s
        entry: Any = first
        while True:
            if isinstance(entry, _Marker):
                markers.append(entry)
            else:
                items.append(entry)
                with self._bytes_lock:
                    self._queued_bytes -= self.size_of(entry)
            if markers or len(items) >= self.batch_rows:
                return items, markers
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return items, markers

    def _write(self, items: list[Any]) -> None:
        try:
            engine = self._connected()
            rows = self.prepare(items)
            with engine.begin() as connection:
                connection.execute(PREDICTIONS.insert(), rows)
        except Exception as error:  # any database or disk failure: counted and reported, never raised to a request
            self._ready = False
            self.count("failed", len(items))
            if not self._warned:
                self._warned = True
                log.warning(f"warning: the prediction log {self.target} cannot be written ({one_line(error)}); "
                            "requests go on unlogged (imgclf_log_rows_total{outcome=\"failed\"} on /metrics)")
            return
        self.count("written", len(items))
        if self._warned:
            self._warned = False
            log.warning(f"the prediction log {self.target} is written again")
        self._maintain_quietly()

    def _connected(self) -> Any:
        if self._engine is None:
            self._engine = open_engine(self.target)
        if not self._ready:
            migrate(self._engine)
            self._ready = True
        return self._engine

    def _maintain_quietly(self) -> None:
        """Apply the retention limits, at most every :data:`MAINTAIN_EVERY_S` seconds; a failure only warns."""
        now = time.monotonic()
        if self.retention == Retention() or (self._maintained is not None and now - self._maintained < MAINTAIN_EVERY_S):
            return
        self._maintained = now
        try:
            with self._engine.begin() as connection:
                delete_old(connection, self.retention, time.time())
        except Exception as error:  # as a failed write: reported, never raised
            log.warning(f"warning: the prediction log {self.target} could not apply its retention ({one_line(error)})")


def delete_old(connection: Any, retention: Retention, now: float) -> int:
    """Delete the rows past ``retention`` (by age, then beyond the newest ``max_rows``); how many went."""
    table = PREDICTIONS
    unreviewed = sa.or_(table.c.review_status.is_(None), table.c.review_status.not_in(REVIEWED))
    deleted = 0
    if retention.max_age_s is not None:
        deleted += connection.execute(table.delete().where(
            unreviewed, table.c.created_at < now - retention.max_age_s)).rowcount
    if retention.max_rows is not None:
        newest_gone = connection.execute(sa.select(table.c.id).order_by(table.c.id.desc())
                                         .offset(retention.max_rows).limit(1)).scalar()
        if newest_gone is not None:
            deleted += connection.execute(table.delete().where(unreviewed, table.c.id <= newest_gone)).rowcount
    return deleted
