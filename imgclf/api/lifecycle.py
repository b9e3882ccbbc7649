"""A model's life after training: ``update`` it with new photos or classes (behind a regression gate), ``diff`` runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.lifecycle.diff import RunDiff
    from imgclf.lifecycle.update import UpdateResult

log = logging.getLogger(__name__)


def update(run: str | Path, add: str | Path, out: str | Path, *, time_budget: str | None = None,
           max_drop: float = 2.0, force: bool = False, corrections: str | None = None,
           rename: list[str] | None = None, class_weights: str | None = None) -> UpdateResult:
    """Teach the model of ``run`` the images of ``add`` (new classes, more photos, corrections) as a new run ``out``.

    >>> result = imgclf.update("runs/shop", "new_photos/", "runs/shop-2")   # doctest: +SKIP
    >>> result.gate.passed                                                 # doctest: +SKIP

    A pretrained probe or tail starts from the run's weights: its head is
    fitted again on the kept embeddings plus the new images' and a tail trains
    a few more epochs; a model trained from scratch starts from the run's weights
    and trains on old and new images for ``time_budget`` (default: the run's
    schedule). The new run is kept only if no old class lost more than
    ``max_drop`` points of recall (multi-label: AP) on the run's held-out
    images; ``force`` keeps it anyway and records that. Writes ``gate.json``,
    ``added_data.csv``, ``model/lineage.json`` and ``report.html`` in ``out``.
    ``corrections`` and ``rename`` (as train's) apply to the old and new images together.
    ``class_weights`` (``none`` or ``auto``) replaces the run's: ``auto`` helps a new class with far
    fewer photos than the old ones, at some cost to the old classes.
    """
    from imgclf.evaluation.run_report import report_run
    from imgclf.lifecycle.update import update as run_update

    result = run_update(run, add, out, time_budget=time_budget, max_drop=max_drop, force=force,
                        corrections=corrections, rename=rename, class_weights=class_weights)
    page, _ = report_run(result.run_dir, known=result.train.held_out_probabilities)
    log.info(f"report: {page}")
    return result


def diff(run_a: str | Path, run_b: str | Path) -> RunDiff:
    """Images added, removed, relabelled, moved between splits or changed from ``run_a`` to ``run_b``, and each class's
    held-out recall (multi-label: AP) in both.

    >>> changes = imgclf.diff("runs/shop", "runs/shop-2")                  # doctest: +SKIP
    >>> len(changes.added), [c.name for c in changes.classes if (c.change or 0) < 0]   # doctest: +SKIP
    """
    from imgclf.lifecycle.diff import diff_runs

    return diff_runs(run_a, run_b)
