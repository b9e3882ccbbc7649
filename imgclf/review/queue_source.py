"""The prediction log's review queue as a review source: confirm, correct or skip a served model's doubtful answers.

The items are the log's pending predictions (and the latest decided ones, so
that a reopened page shows what was decided); a decision goes to the log
(:func:`imgclf.watch.queue.decide`) and the labels CSV of the confirmed and
corrected images is rewritten after each (``path,label``, the manifest
``imgclf update --add`` reads). Images are the stored copies of
``--log-images``, named by the prediction's id. The counts carry accuracy
measured on the reviewed items, per day.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf.review.items import BulkAction, Counts, Decision, ReviewItem
from imgclf.watch import queue

SHOWN = 500  # pending items listed at once: a page a person works through, not the whole backlog
DECIDED_SHOWN = 100  # the latest decided items listed with them
STATUS_ACTION = {status: action for action, status in queue.ACTIONS.items()}


class QueueReview:
    """The review queue of the log ``log`` (a path, URL or an engine :func:`imgclf.watch.queue.open_log` gave); the
    confirmed and corrected images go to the ``path,label`` CSV ``labels``. ``classes`` gives the classes a
    correction may choose from, asked each time the page loads: a server that reloads a version with a new class
    offers it without a restart."""

    title = "Review queue"
    actions: tuple[str, ...] = ("confirm", "correct", "skip")
    label_actions: tuple[str, ...] = ("correct",)
    label_name = "answer"

    def __init__(self, log: Any, classes: Callable[[], list[str]], labels: Path) -> None:
        self._log = log
        self._classes = classes
        self.labels = labels
        self.where = f"the prediction log; confirmed and corrected images to {labels} (imgclf update --add)"
        self._listed: dict[int, queue.QueueItem] = {}

    @property
    def log(self) -> Any:
        """The log's engine, opened on first use: a server whose log cannot be opened still answers predictions."""
        if isinstance(self._log, (str, Path)):
            self._log = queue.open_log(self._log)
        return self._log

    def classes(self) -> list[str]:
        return list(self._classes())

    def items(self) -> list[ReviewItem]:
        waiting = queue.pending(self.log, limit=SHOWN)
        done = queue.reviewed(self.log)[-DECIDED_SHOWN:]
        self._listed.update({item.id: item for item in [*waiting, *done]})
        return [_review_item(item) for item in sorted(self._listed.values(), key=lambda item: item.id)]

    def image(self, index: int) -> Path | None:
        item = self._listed.get(index)  # only the images of items this page listed
        return Path(item.image_path) if item is not None and item.image_path else None

    def decisions(self) -> dict[str, Decision]:
        """The decisions stored in the log now, for the items listed (everyone's: the log is the one store)."""
        if not self._listed:
            self.items()
        return {str(number): Decision(STATUS_ACTION[status], label or "" if status == "corrected" else "", _when(at))
                for number, (status, label, at) in queue.statuses(self.log, list(self._listed)).items()
                if status in STATUS_ACTION}

    def decide(self, changes: dict[str, Decision | None]) -> None:
        for key, decision in changes.items():
            if decision is None:
                queue.undecide(self.log, int(key))
            else:
                queue.decide(self.log, int(key), decision.action, decision.label or None)
        queue.export_labels(self.log, self.labels)

    def bulk_actions(self) -> list[BulkAction]:
        return []

    def bulk(self, name: str) -> dict[str, Decision]:
        return {}

    def counts(self) -> Counts:
        decided = len(queue.reviewed(self.log))
        return Counts(items=queue.queue_size(self.log) + decided, decided=decided, accuracy=accuracy_by_day(self.log))


def default_labels(target: str | Path) -> Path:
    """Where the labels CSV goes: beside a SQLite log (``predictions-labels.csv``), else ``review-labels.csv`` here."""
    if "://" in str(target):
        return Path("review-labels.csv")
    return Path(target).with_name(f"{Path(target).stem}-labels.csv")


def accuracy_by_day(log: Any) -> list[dict[str, Any]]:
    """Measured accuracy in production per UTC day of the predictions: the share a reviewer confirmed, and the same
    on the random audit sample alone (the unbiased figure: doubtful items are wrong more often by design)."""
    return [{"period": datetime.fromtimestamp(window.start, timezone.utc).date().isoformat(),
             "reviewed": window.reviewed, "correct": window.correct, "accuracy": window.correct / window.reviewed,
             "audited": window.audited, "audited_correct": window.audited_correct}
            for window in queue.accuracy_over_time(log) if window.reviewed]


def _review_item(item: queue.QueueItem) -> ReviewItem:
    sure = f"{item.confidence:.0%} sure" if item.confidence is not None else "multi-label"
    copy = "" if item.image_path else "; no stored copy of the image (serve with --log-images)"
    when = datetime.fromtimestamp(item.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ReviewItem(key=str(item.id), image=item.id, kind=item.queue_reason or "queued", label=item.prediction,
                      answer=item.prediction, reason=f"{item.image_name}: {sure}, {when}, model {item.model_version}"
                                                     f"{copy}", suggestions=tuple(item.top_k))


def _when(seconds: float | None) -> str:
    return "" if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
