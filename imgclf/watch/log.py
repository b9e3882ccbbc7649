"""The prediction log serve and predict hold: options, the observations they hand over, and the rows made of them.

:class:`PredictionLog` names the model (``bundle_content_id``), decides
which answers enter the review queue, scores novelty against the bundle's
reference statistics where it has them, keeps image copies, and hands the
rows to the one :class:`~imgclf.watch.writer.LogWriter` thread. Its
:meth:`~PredictionLog.record` only queues: everything else runs in that
thread.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.deploy.bundle import MODEL_FILE, BundleInfo
from imgclf.deploy.metadata import bundle_content_id
from imgclf.deploy.predict import PredictionRow
from imgclf.errors import ImgclfError, one_line
from imgclf.watch.images import ImageStore
from imgclf.watch.queue import PENDING, ReviewPolicy, default_review_below
from imgclf.watch.records import Observation, image_bytes, image_facts, observation_of_row, row_of
from imgclf.watch.schema import database_url
from imgclf.watch.writer import LogWriter, Retention

log = logging.getLogger(__name__)

AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str, option: str = "--log-keep") -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if match is None or float(match.group(1)) <= 0:
        raise ImgclfError(f"{option} {text}: give a positive age with a unit, e.g. 30d, 12h, 90m (s m h d w)")
    return float(match.group(1)) * AGE_UNITS[match.group(2)]


@dataclass(frozen=True)
class LogOptions:
    """What ``--log`` and its companion options ask for."""

    target: str | Path  # a SQLite file path, or a postgresql:// URL
    images: Path | None = None  # --log-images: where image copies go
    images_max_mb: float = 1024.0  # --log-images-max-mb
    keep: str | None = None  # --log-keep: an age, e.g. 30d
    max_rows: int | None = None  # --log-max-rows
    review_below: float | None = None  # --review-below (default: the bundle's threshold, else 0.5)
    audit_rate: float = 0.0  # --audit-rate
    max_queue: int = 10_000  # rows waiting for the writer; more are dropped (and counted)

    def retention(self) -> Retention:
        if self.max_rows is not None and self.max_rows < 1:
            raise ImgclfError(f"--log-max-rows must be at least 1, got {self.max_rows}")
        return Retention(parse_age(self.keep) if self.keep else None, self.max_rows)


def bundle_reference(bundle_dir: Path) -> Any:
    """The bundle's reference statistics for novelty, or None (a bundle trained before they existed).

    ``load_reference(bundle_dir) -> Reference | None``, whose
    ``novelty(embeddings) -> (scores, novel)`` scores a batch.
    """
    # TODO reference: imgclf/watch/reference.py comes with the monitor work; import it plainly once it has landed
    try:
        module = importlib.import_module("imgclf.watch.reference")
    except ModuleNotFoundError:
        return None
    return module.load_reference(bundle_dir)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one per bundle version, references unhashable
class ModelFacts:
    """What the log records of the model that answered: its version name, its name, its novelty reference."""

    version: str
    name: str
    reference: Any  # a Reference (``novelty(embeddings) -> (scores, novel)``) or None


@dataclass
class PredictionLog:
    """Records answers of one model: :meth:`record` queues, the writer thread does the rest.

    An observation may name another bundle folder (a server whose model was
    swapped): its rows get that bundle's version, name and reference, worked
    out once per bundle in the writer thread.
    """

    options: LogOptions
    bundle_dir: Path
    info: BundleInfo
    count: Callable[[str, int], None] = lambda outcome, rows: None  # e.g. the server's Prometheus counter
    reference: Any = "bundle"  # "bundle": each bundle's own (bundle_reference); None: no novelty; or a Reference
    counts: Counter[str] = field(default_factory=Counter)  # rows written, dropped, failed so far

    def __post_init__(self) -> None:
        database_url(self.options.target)  # a bad --log value fails now, with one line
        below = self.options.review_below
        self.policy = ReviewPolicy(default_review_below(self.info) if below is None else below,
                                   self.options.audit_rate)
        self._models: dict[tuple[str, int], ModelFacts] = {}
        self.model = self.facts_of(self.bundle_dir)  # now: a bundle that cannot be read fails at start
        self.images = (ImageStore(self.options.images, int(self.options.images_max_mb * 1024 * 1024))
                       if self.options.images else None)
        self._image_warned = self._lost_warned = False
        self.writer = LogWriter(self.options.target, self._prepare, retention=self.options.retention(),
                                max_queue=self.options.max_queue, count=self._count, size_of=_held_bytes)

    def facts_of(self, bundle_dir: Path) -> ModelFacts:
        """The version, name and reference of a bundle folder, worked out once (again if its model.json changes)."""
        key = (str(bundle_dir), (bundle_dir / MODEL_FILE).stat().st_mtime_ns)
        if key not in self._models:
            name = bundle_dir.parent.name if bundle_dir.name == "model" else bundle_dir.name
            reference = bundle_reference(bundle_dir) if isinstance(self.reference, str) else self.reference
            self._models[key] = ModelFacts(bundle_content_id(bundle_dir), name, reference)
        return self._models[key]

    def record(self, observations: list[Observation]) -> None:
        """Queue the rows of answers just given; never blocks, never raises (a full queue drops and counts)."""
        for observation in observations:
            self.writer.submit(observation)

    def lost(self, rows: int, error: Exception) -> None:
        """Count rows that could not even be queued (as failed), with one warning line."""
        self._count("failed", rows)
        if not self._lost_warned:
            self._lost_warned = True
            log.warning(f"warning: predictions could not be logged ({one_line(error)}); requests go on")

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until what was recorded is written (or failed); False if not within ``timeout_s``."""
        return self.writer.flush(timeout_s)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self.writer.close()

    def _count(self, outcome: str, rows: int) -> None:
        self.counts[outcome] += rows
        self.count(outcome, rows)

    def _prepare(self, observations: list[Observation]) -> list[dict[str, Any]]:
        """The rows of a batch (in the writer thread): image facts and copies, novelty, queue reasons."""
        rows, models = [], [self.facts_of(observation.bundle or self.bundle_dir) for observation in observations]
        for observation, model in zip(observations, models):
            data = image_bytes(observation)
            facts = image_facts(data) if data is not None else None
            copy = self._copy(data, facts.sha256, facts.image_format) if data is not None and facts else None
            rows.append(row_of(observation, model.version, model.name, facts, copy))
        scores, novel = novelty(observations, models)
        for row, observation, score, is_novel in zip(rows, observations, scores, novel):
            reason = self.policy.reason(observation.top[0][1] if observation.top else None, is_novel)
            row.update(novelty=score, novel=is_novel, queue_reason=reason, review_status=PENDING if reason else None)
        return rows

    def _copy(self, data: bytes, sha256: str, image_format: str | None) -> Path | None:
        """The image's stored copy (with --log-images); a failing folder warns once and logs the row without it."""
        if self.images is None:
            return None
        try:
            return self.images.store(data, sha256, image_format)
        except (OSError, ImgclfError) as error:
            if not self._image_warned:
                self._image_warned = True
                log.warning(f"warning: image copies cannot be written to {self.options.images} ({one_line(error)}); "
                            "rows are logged without them")
            return None


def logged_rows(rows: Iterator[PredictionRow], prediction_log: PredictionLog, threshold: float | None
                ) -> Iterator[PredictionRow]:
    """predict's rows, passed on as they come, each answered one also queued to the log; the log is closed (what
    is queued written) when the stream ends. One ``request_id`` names the whole run."""
    run_id = uuid.uuid4().hex
    try:
        for row in rows:
            if not row.error:
                prediction_log.record([observation_of_row(row, run_id, threshold, time.time())])
            yield row
    finally:
        prediction_log.close()
        lost = prediction_log.counts["dropped"] + prediction_log.counts["failed"]
        if lost:
            log.warning(f"warning: {lost:,} predictions could not be logged to {prediction_log.options.target}")


def _held_bytes(observation: Observation) -> int:
    """The memory an observation holds while queued: its image's bytes (a path holds none)."""
    return len(observation.image) if isinstance(observation.image, bytes) else 0


def novelty(observations: list[Observation], models: list[ModelFacts]
            ) -> tuple[list[float | None], list[bool | None]]:
    """Each observation's novelty score and verdict from its model's reference, one call per model (None without a
    reference or features)."""
    scores: list[float | None] = [None] * len(observations)
    novel: list[bool | None] = [None] * len(observations)
    for model in set(models):
        having = [index for index, (observation, its) in enumerate(zip(observations, models))
                  if its == model and observation.features is not None]
        if model.reference is None or not having:
            continue
        batch = np.stack([np.asarray(observations[index].features, dtype=np.float32) for index in having])
        batch_scores, batch_novel = model.reference.novelty(batch)
        for index, score, verdict in zip(having, batch_scores, batch_novel):
            scores[index], novel[index] = float(score), bool(verdict)
    return scores, novel
