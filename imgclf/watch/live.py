"""The server's own monitor: its latest predictions kept in memory and examined in a background thread.

``serve`` hands every answered batch to :meth:`LiveMonitor.observe` (an
append under a lock, nothing more on a request's clock); every
``interval_s`` a daemon thread runs :func:`~imgclf.watch.monitor.window_report`
on the last ``window`` predictions, the same figures ``imgclf monitor``
gives, and ``/metrics`` reads the latest ones as gauges. It needs no
prediction log, so alerting works on a server started without ``--log``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.watch.monitor import Records, WindowReport, window_report
from imgclf.watch.reference import Reference, load_reference

log = logging.getLogger(__name__)

WINDOW = 1000  # the latest predictions the gauges describe
INTERVAL_S = 30.0  # how often they are recomputed
MIN_CONFIDENCE = 0.5


class LiveMonitor:
    """The latest ``window`` predictions of one server, and the figures of the last time they were examined."""

    def __init__(self, classes: list[str], reference: Reference | None, window: int = WINDOW,
                 interval_s: float = INTERVAL_S, min_confidence: float = MIN_CONFIDENCE) -> None:
        self.classes = classes
        self.reference = reference
        self.interval_s = interval_s
        self.min_confidence = min_confidence
        self._rows: deque[tuple[float, int, float, np.ndarray | None]] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: WindowReport | None = None

    @classmethod
    def of(cls, directory: Path | None, classes: list[str], **options: Any) -> LiveMonitor:
        """The monitor of the bundle at ``directory``, with its reference when it has a readable one."""
        reference = None
        try:
            reference = load_reference(directory) if directory is not None else None
        except ImgclfError as error:
            log.warning(f"warning: serving without drift and novelty gauges: {error}")
        return cls(classes, reference, **options)

    def observe(self, probabilities: np.ndarray, decided: np.ndarray, features: np.ndarray | None = None) -> None:
        """Keep a batch's answers: (N, classes) probabilities, the decided class indices, the pooled features if any."""
        now = time.time()
        rows = np.arange(len(decided))
        confidence = np.asarray(probabilities)[rows, decided]
        with self._lock:
            for row in rows:
                self._rows.append((now, int(decided[row]), float(confidence[row]),
                                   None if features is None else np.asarray(features[row], dtype=np.float32)))

    def refresh(self) -> WindowReport | None:
        """Examine the window now (the thread does this every ``interval_s``); None while it is empty."""
        with self._lock:
            rows = list(self._rows)
        if not rows:
            return None
        embedded = [row[3] is not None for row in rows]
        dim = next((len(row[3]) for row in rows if row[3] is not None), 0)
        embeddings = np.stack([row[3] if row[3] is not None else np.zeros(dim, np.float32) for row in rows]) \
            if dim else None
        records = Records(np.array([row[0] for row in rows]), [self.classes[row[1]] for row in rows],
                          np.array([row[2] for row in rows]), embeddings, np.array(embedded, dtype=bool),
                          [None] * len(rows))
        try:
            self.latest = window_report(records, np.arange(len(rows)), self.classes, self.reference,
                                        self.min_confidence)
        except ImgclfError as error:  # features of another size than the reference's: say so once, keep the rest
            log.warning(f"warning: drift and novelty gauges stopped: {error}")
            self.reference = None
        return self.latest

    def figures(self) -> dict[str, float]:
        """The gauges' values: NaN for what has not been measured (no predictions yet, no reference)."""
        latest = self.latest

        def number(value: float | None) -> float:
            return math.nan if value is None else float(value)

        if latest is None:
            return {name: math.nan for name in GAUGES}
        return {"window_predictions": float(latest.requests), "drift_mmd2": number(latest.drift_mmd2),
                "drift_threshold": number(latest.drift_threshold),
                "drift_alarm": math.nan if latest.drift_mmd2 is None else float(latest.drift),
                "novelty_share": number(latest.novelty_share),
                "low_confidence_share": number(latest.low_confidence_share), "class_share_p": number(latest.class_p)}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="imgclf-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()


GAUGES = {  # name after imgclf_monitor_: what it says
    "window_predictions": "Predictions in the monitored window (the server's latest).",
    "drift_mmd2": "Embedding drift of the latest window: MMD^2 against the model's val embeddings.",
    "drift_threshold": "The latest window's drift threshold: the 99th percentile of its MMD^2 under relabellings with val's.",
    "drift_alarm": "1 when the latest window's drift statistic is above its threshold.",
    "novelty_share": "Share of the latest window's images more novel than 99% of val's (max-logit score).",
    "low_confidence_share": "Share of the latest window's predictions below the confidence floor.",
    "class_share_p": "Chi-square p-value of the latest window's predicted classes against the training prior.",
}
