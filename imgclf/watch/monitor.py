"""``imgclf monitor``'s figures: logged predictions cut into time windows, each compared with the training reference.

Per window: request volume; predicted-class shares against the training
prior (chi-square); the confidence distribution and the share below
``--min-confidence``; the share of novel images (scoring beyond 99% of
val's photos, :mod:`imgclf.watch.novelty`) with examples; and the
embedding drift test with its verdict (:mod:`imgclf.watch.drift`). The same
:func:`window_report` serves the report, the benchmark and the server's
gauges (:mod:`imgclf.watch.live`), so the three agree on what a window says.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.watch.drift import (
    ALPHA,
    CLASS_SHARE_P,
    MIN_WINDOW,
    NOVELTY_P,
    PERMUTATIONS,
    class_share_test,
    novelty_excess,
)
from imgclf.watch.novelty import DESCRIPTIONS
from imgclf.watch.reference import NOVELTY_QUANTILE, Reference

CONFIDENCE_BINS = 10  # the confidence histogram's bins over [0, 1]
EXAMPLES = 8  # novel images shown per window
_WINDOW = re.compile(r"^\s*(\d+)\s*(requests?)?\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class Records:
    """Logged predictions, oldest first: what the monitor reads from the log (or the server keeps in memory)."""

    times: np.ndarray  # (N,) Unix seconds
    predicted: list[str]  # the decided class (the first of the answer's ranking)
    confidence: np.ndarray  # (N,) its probability; NaN when the model gives none (multi-label)
    embeddings: np.ndarray | None  # (N, D) pooled features, zero rows where a prediction has none
    has_embedding: np.ndarray  # (N,) bool
    images: list[str | None]  # each image's stored copy, else its content hash, else None

    def __len__(self) -> int:
        return len(self.times)


@dataclass(frozen=True)
class WindowSpec:
    """``--window``: a duration (``1h``, ``30m``) or a number of requests (``1000``)."""

    kind: str  # time | requests
    size: float

    def __str__(self) -> str:
        return f"{self.size:g} requests" if self.kind == "requests" else f"{self.size:g} s"


def parse_window(text: str) -> WindowSpec:
    """``1h``, ``15m``, ``90s``, ``1d`` or ``1000`` (``1000 requests``); a one-line error otherwise."""
    if match := _WINDOW.match(text):
        if int(match.group(1)) < 1:
            raise ImgclfError(f"--window {text}: a window needs at least one request")
        return WindowSpec("requests", int(match.group(1)))
    if (match := _DURATION.match(text)) and float(match.group(1)) > 0:
        return WindowSpec("time", float(match.group(1)) * UNITS[match.group(2)])
    raise ImgclfError(f"--window {text!r} is not a window; give a duration (1h, 30m, 1d) or a number of requests (1000)")


def cut_windows(records: Records, spec: WindowSpec) -> list[np.ndarray]:
    """The row indices of each window, oldest first: consecutive runs of requests, or calendar-aligned spans of time."""
    if not len(records):
        return []
    if spec.kind == "requests":
        size = int(spec.size)
        return [np.arange(start, min(start + size, len(records))) for start in range(0, len(records), size)]
    slots = np.floor(records.times / spec.size).astype(np.int64)
    return [np.flatnonzero(slots == slot) for slot in np.unique(slots)]


@dataclass
class WindowReport:
    """What one window of predictions says, and whether it raises an alarm."""

    start: float
    end: float
    requests: int
    class_counts: dict[str, int]
    class_chi2: float | None = None
    class_p: float | None = None
    confidence_mean: float | None = None
    confidence_histogram: list[int] = field(default_factory=list)
    low_confidence_share: float | None = None
    embedded: int = 0
    novelty_share: float | None = None
    novelty_p: float | None = None  # binomial: this many novel images if only val's 1% were expected
    novel_examples: list[str] = field(default_factory=list)
    drift_mmd2: float | None = None
    drift_threshold: float | None = None  # the window's own: its permutation statistics' 1 - ALPHA quantile
    drift_p: float | None = None
    drift_tested: int = 0
    alarms: list[str] = field(default_factory=list)  # drift, novelty, class-shares

    @property
    def drift(self) -> bool:
        return "drift" in self.alarms


def window_report(records: Records, rows: np.ndarray, classes: list[str], reference: Reference | None,
                  min_confidence: float, seed: int = 0) -> WindowReport:
    """The figures of the window made of ``rows`` of ``records``."""
    counts = {name: 0 for name in classes}
    for row in rows:
        counts[records.predicted[row]] = counts.get(records.predicted[row], 0) + 1
    report = WindowReport(float(records.times[rows].min()), float(records.times[rows].max()), len(rows), counts)
    _confidence(report, records.confidence[rows], min_confidence)
    if reference is not None and not reference.multilabel:
        report.class_chi2, report.class_p = class_share_test(np.array([counts[name] for name in classes]),
                                                             reference.prior)
        if report.class_p < CLASS_SHARE_P:
            report.alarms.append("class-shares")
    if reference is not None and records.embeddings is not None:
        _embeddings(report, records, rows[records.has_embedding[rows]], reference, seed)
    return report


def _confidence(report: WindowReport, confidence: np.ndarray, min_confidence: float) -> None:
    known = confidence[~np.isnan(confidence)]
    if len(known):
        report.confidence_mean = float(known.mean())
        report.confidence_histogram = np.histogram(known, bins=CONFIDENCE_BINS, range=(0, 1))[0].tolist()
        report.low_confidence_share = float(np.mean(known < min_confidence))


def _embeddings(report: WindowReport, records: Records, rows: np.ndarray, reference: Reference, seed: int) -> None:
    """Novelty share and examples, and the drift test, from the window's rows that carry an embedding."""
    report.embedded = len(rows)
    if not len(rows):
        return
    assert records.embeddings is not None
    embeddings = records.embeddings[rows]
    if embeddings.shape[1] != reference.dim:
        raise ImgclfError(f"the log's embeddings have {embeddings.shape[1]} dimensions, the model's reference "
                          f"{reference.dim}: they come from another model; pass --model-version to pick its rows")
    scores, novel = reference.novelty(embeddings)
    report.novelty_share = float(novel.mean())
    farthest = [rows[index] for index in np.argsort(-scores) if novel[index]][:EXAMPLES]
    report.novel_examples = [image for image in (records.images[row] for row in farthest) if image]
    report.novelty_p = novelty_excess(int(novel.sum()), len(rows), 1.0 - NOVELTY_QUANTILE)
    if report.novelty_p < NOVELTY_P:
        report.alarms.append("novelty")
    if len(rows) >= MIN_WINDOW:
        report.drift_mmd2, report.drift_threshold, report.drift_p, report.drift_tested = reference.drift_test(
            embeddings, seed)
        if report.drift_mmd2 > report.drift_threshold:
            report.alarms.insert(0, "drift")


@dataclass
class MonitorReport:
    """Every window of a log, with what the model's reference says about each."""

    model: str
    log: str
    window: str
    min_confidence: float
    classes: list[str]
    prior: list[float] | None
    reference: dict[str, Any] | None  # the thresholds and how they were measured; None without a reference
    windows: list[WindowReport]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "windows": [{**asdict(window), "drift": window.drift} for window in self.windows]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def reference_facts(reference: Reference) -> dict[str, Any]:
    """The reference's settings for the report: the novelty score and threshold, the drift test's with its false alarms.

    ``drift_false_alarm_rate`` is the share of val windows the test flagged
    against the rest of val at training (None for a reference written before the permutation test).
    """
    drift = reference.drift
    return {"embedding": reference.embedding, "train_sample": len(reference.train),
            "novelty_score": DESCRIPTIONS[reference.novelty_score.kind],
            "novelty_threshold": reference.novelty_threshold, "val_images": len(reference.val_scores),
            "drift_alpha": ALPHA, "drift_permutations": PERMUTATIONS, "drift_reference": len(reference.drift_reference),
            "drift_test_size": drift.test_size, "drift_false_alarm_rate": drift.false_alarm_rate,
            "drift_bandwidth": drift.bandwidth}


def monitor_records(records: Records, spec: WindowSpec, classes: list[str], reference: Reference | None,
                    min_confidence: float, model: str = "", log: str = "") -> MonitorReport:
    """The report over every window of ``records``."""
    windows = [window_report(records, rows, classes, reference, min_confidence, seed=index)
               for index, rows in enumerate(cut_windows(records, spec))]
    return MonitorReport(model, log, str(spec), min_confidence, classes,
                         None if reference is None else [float(p) for p in reference.prior],
                         None if reference is None else reference_facts(reference), windows)
