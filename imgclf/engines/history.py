"""One row of ``metrics.csv`` per epoch, built and reported (logged) the same way by every engine.

The row's names are :data:`imgclf.runs.METRIC_COLUMNS`; ``seconds`` is the
epoch's training time (validation excluded), so images/s compares engines.
The engine adds ``planned_epochs``, the run's epochs as planned when the
epoch ended (a time budget re-plans them after each epoch).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def history_row(epoch: int, stage: str, train_loss: float, train_accuracy: float, val_loss: float | None,
                val_accuracy: float | None, lr: float, seconds: float, images: int) -> dict[str, Any]:
    """The metrics of epoch ``epoch`` (1-based), rounded as metrics.csv keeps them."""
    return {
        "epoch": epoch, "stage": stage,
        "train_loss": round(train_loss, 6), "train_accuracy": round(train_accuracy, 6),
        "val_loss": None if val_loss is None else round(val_loss, 6),
        "val_accuracy": None if val_accuracy is None else round(val_accuracy, 6),
        "lr": round(lr, 8), "seconds": round(seconds, 3), "images_per_second": round(images / max(seconds, 1e-9), 1),
    }


def log_epoch(row: dict[str, Any], best: bool) -> None:
    """The line each finished epoch reports under its progress bar."""
    val = ""
    if row["val_accuracy"] is not None:
        val = f"  val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.2%}"
    marker = "  best" if best else ""
    log.info(f"epoch {row['epoch']} ({row['stage']}): train loss {row['train_loss']:.4f}  "
                  f"train acc {row['train_accuracy']:.2%}{val}  {row['images_per_second']:,.0f} img/s{marker}")
