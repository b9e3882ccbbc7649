"""Training events and the bookkeeping done on them: metrics.csv, TensorBoard, progress, early stopping, budget.

An engine fires the events of :class:`Callback` (after fastai's ``Learner``
events and Keras's ``Callback``), in the order of the list it was given,
each with the one :class:`FitState` it keeps up to date::

    on_fit_begin
      on_stage_begin                      once per stage (probe, finetune, ...)
        on_epoch_begin
          on_step_end                     after every training step
        on_epoch_end                      fit.row is the epoch's metrics.csv row, validation included
      on_interrupt                        Ctrl-C (or fit.interrupt()): the checkpoint is saved, fit ends
    on_fit_end                            always, also after an interrupt

A callback changes the run only through the state: ``fit.stop(reason)``
ends it after this epoch (after this step, when asked during one) as a
finished run (the best epoch is shipped),
``fit.interrupt()`` as Ctrl-C does (resumable). That is all early stopping,
the budget guard or an Optuna pruner needs; a callback that must abort a
run at once (a pruned trial) raises. Checkpoints are the engine's own
callback, since what a checkpoint holds is framework state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.config import TrainConfig, parse_duration
from imgclf.console import training_progress
from imgclf.engines import budget
from imgclf.engines.budget import Clock
from imgclf.engines.contract import BestEpoch
from imgclf.engines.history import log_epoch

if TYPE_CHECKING:
    from imgclf.engines.contract import Stage
    from imgclf.runs import RunDirectory

log = logging.getLogger(__name__)


@dataclass
class FitState:
    """Where a fit is, as callbacks see it; the engine updates it before each event."""

    config: TrainConfig
    stages: list[Stage]
    history: list[dict[str, Any]]  # finished epochs' rows, a resumed run's earlier ones included
    stage_index: int = 0
    epoch: int = 0  # the current (or just finished) epoch, 1-based, counted over the whole run
    epoch_in_stage: int = 0  # 1-based
    epochs_in_stage: int = 0
    steps: int = 0  # training steps in this epoch (0 for a probe fitted on embeddings)
    step: int = 0  # steps done in this epoch (a run resumed mid-epoch starts past 0)
    images: int = 0  # training images seen this epoch (since the resume, for a resumed epoch)
    loss: float = 0.0  # running means of this epoch's training steps
    accuracy: float = 0.0
    step_loss: Any = None  # at on_step_end: the step's loss (a detached tensor in torch), for guards such as NaN checks
    row: dict[str, Any] | None = None  # at on_epoch_end: the epoch's metrics.csv row
    best: BestEpoch = field(default_factory=BestEpoch)  # the engine's own record, saved in its checkpoint
    last_epoch: bool = False  # at on_epoch_end: nothing of the plan is left after this epoch
    fits_budget: bool = False  # the engine re-plans this stage's length to the time budget after every epoch
    stop_reason: str | None = None
    interrupted: bool = False
    # Ctrl-C (SIGTERM under torchrun) arrived: the torch loop turns it into ``interrupted`` only where every
    # rank checks together, so no rank leaves the loop a step before another (a signal lands between checks)
    signalled: bool = False

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights are shipped so far (``--monitor``)."""
        return self.best.epoch

    @property
    def stale(self) -> int:
        """Epochs since the best one."""
        return self.best.stale

    def stop(self, reason: str) -> None:
        """End the fit as a finished run (the best epoch is shipped): after this epoch, or this step within one."""
        self.stop_reason = reason

    def interrupt(self) -> None:
        """End the fit after this step as Ctrl-C does: the checkpoint is kept for ``--resume``."""
        self.interrupted = True


class Callback:
    """Override the events you need; every one gets the engine's :class:`FitState`."""

    def on_fit_begin(self, fit: FitState) -> None: ...

    def on_stage_begin(self, fit: FitState) -> None: ...

    def on_epoch_begin(self, fit: FitState) -> None: ...

    def on_step_end(self, fit: FitState) -> None: ...

    def on_epoch_end(self, fit: FitState) -> None: ...

    def on_interrupt(self, fit: FitState) -> None: ...

    def on_fit_end(self, fit: FitState) -> None: ...


def fire(callbacks: list[Callback], event: str, fit: FitState) -> None:
    """Call ``event`` on every callback, in order."""
    for callback in callbacks:
        getattr(callback, event)(fit)


class MetricsCsv(Callback):
    """``metrics.csv``, rewritten (atomically) with the whole history after every epoch."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def on_epoch_end(self, fit: FitState) -> None:
        self.run.write_metrics(fit.history)


class ProgressBar(Callback):
    """Each epoch's Rich bar (steps, running loss and accuracy, images/s, ETA) and the line it leaves."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.started = 0.0

    def on_epoch_begin(self, fit: FitState) -> None:
        self.started = time.perf_counter()
        if fit.steps:  # a probe fitted on embeddings has no steps, and shows its own bars
            self.progress = training_progress()
            self.progress.start()
            self.task = self.progress.add_task(f"{fit.stage.name} {fit.epoch_in_stage}/{fit.epochs_in_stage}",
                                               total=fit.steps, completed=fit.step, loss=0.0, accuracy=0.0,
                                               speed=0.0)

    def on_step_end(self, fit: FitState) -> None:
        self.progress.update(self.task, completed=fit.step, loss=fit.loss, accuracy=fit.accuracy,
                             speed=fit.images / max(time.perf_counter() - self.started, 1e-9))

    def on_epoch_end(self, fit: FitState) -> None:
        self._close()
        assert fit.row is not None
        log_epoch(fit.row, fit.best_epoch == fit.row["epoch"])

    def on_interrupt(self, fit: FitState) -> None:
        self._close()

    def on_fit_end(self, fit: FitState) -> None:
        self._close()

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class TensorBoard(Callback):
    """Each epoch's numbers as TensorBoard scalars (``train/loss``, ``val/accuracy``, ...)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writer: Any = None

    def on_fit_begin(self, fit: FitState) -> None:
        from imgclf.console import native_stderr_silenced

        with native_stderr_silenced():  # TensorBoard imports TensorFlow when it is installed
            from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder))

    def on_epoch_end(self, fit: FitState) -> None:
        assert fit.row is not None
        for name, value in fit.row.items():
            if isinstance(value, (int, float)) and name != "epoch" and math.isfinite(value):
                group = "val" if name.startswith("val_") else "train"
                self.writer.add_scalar(f"{group}/{name.removeprefix('val_').removeprefix('train_')}", value,
                                       fit.row["epoch"])
        self.writer.flush()

    def on_fit_end(self, fit: FitState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EarlyStopping(Callback):
    """``--early-stopping N``: stop once ``--monitor`` has not improved for N epochs; the best epoch is shipped."""

    def __init__(self, patience: int, monitor: str) -> None:
        self.patience = patience
        self.monitor = monitor

    def on_epoch_end(self, fit: FitState) -> None:
        if fit.stale >= self.patience:
            log.warning(f"early stopping: no better {self.monitor} for {self.patience} epoch(s); "
                        f"keeping epoch {fit.best_epoch}")
            fit.stop("early stopping")


class TimeBudget(Callback):
    """``--time-budget``'s last resort: stop a run whose schedule no longer fits, and say what that cost.

    The engine fits the schedule to the budget, and re-plans a whole-network
    stage after every epoch from the speed of the epochs trained
    (``fit.fits_budget``), so such a run ends its schedule on time by
    itself. A stage it cannot re-plan (the tail's fixed epochs) is stopped
    after an epoch when one more would overrun the budget by more than 10%.
    Any run at :data:`STALLED` times its budget (a machine that stalled
    inside an epoch) stops after the step it is in.
    """

    STALLED = 1.5

    def __init__(self, seconds: float, clock: Clock | None = None) -> None:
        self.budget = seconds
        self.now = clock or budget.CLOCK  # the engine's clock (a test's fake one)
        self.started = 0.0

    def on_fit_begin(self, fit: FitState) -> None:
        self.started = self.now() - sum(row["seconds"] for row in fit.history)

    def on_step_end(self, fit: FitState) -> None:
        used = self.now() - self.started
        if fit.stop_reason is None and used > self.STALLED * self.budget:
            log.warning(f"time budget: {used:.0f} s used of {self.budget:.0f} s (the machine stalled); "
                        "stopping now, before the schedule's end: the learning rate did not decay to its end")
            fit.stop("time budget overrun")

    def on_epoch_end(self, fit: FitState) -> None:
        assert fit.row is not None
        if fit.last_epoch or fit.fits_budget or fit.stop_reason is not None:
            return
        if self.now() - self.started + fit.row["seconds"] > 1.1 * self.budget:
            log.warning("time budget reached; stopping after this epoch, before the schedule's end")
            fit.stop("time budget")


def standard_callbacks(config: TrainConfig, run: RunDirectory) -> list[Callback]:
    """The bookkeeping of every ``imgclf train`` run, in the order it happens after an epoch."""
    callbacks: list[Callback] = [MetricsCsv(run), ProgressBar(), TensorBoard(run.tensorboard_dir)]
    if config.early_stopping is not None:
        callbacks.append(EarlyStopping(config.early_stopping, config.monitor))
    if config.time_budget:
        callbacks.append(TimeBudget(parse_duration(config.time_budget)))
    return callbacks
