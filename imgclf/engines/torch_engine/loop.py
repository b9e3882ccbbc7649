"""The fit, top to bottom: fit -> stage -> epoch -> step, each a screenful, firing the callbacks' events.

Everything a level needs from below has a name: a stage's set-up is
:mod:`.stages`, a step's update :mod:`.step`, the schedule's extras
:mod:`.tricks`, the budget's re-plan :mod:`.planning`, the probe stage
:mod:`.probe`. Where the run is lives in ``engine.progress``
(:class:`~.progress.RunProgress`), which the checkpoint saves whole.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf import distributed
from imgclf.engines.callbacks import Callback, FitState, fire
from imgclf.engines.contract import FitResult, Stage
from imgclf.engines.lookahead import Lookahead
from imgclf.engines.torch_engine.interrupts import Checkpoint, deferred_interrupt, take
from imgclf.engines.torch_engine.planning import follows_budget, planned_epochs, replan
from imgclf.engines.torch_engine.progress import EpochTally, RunProgress
from imgclf.engines.torch_engine.stages import set_train_mode, start_stage, steps_in
from imgclf.engines.torch_engine.step import train_step
from imgclf.engines.torch_engine.tricks import at_low_res, downscale, freeze_whitening_bias, update_ema
from imgclf.engines.torch_engine.validation import epoch_row

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine

log = logging.getLogger(__name__)


def fit(engine: TorchEngine, callbacks: list[Callback]) -> FitResult:
    """Run every stage from where ``build`` left off, firing ``callbacks`` (after the engine's checkpoint)."""
    started = engine.now()
    resume = engine.checkpoint
    engine.progress = progress = RunProgress.from_state(resume) if resume is not None else RunProgress()
    engine.restore(resume)
    fit = FitState(engine.config, engine.stages, progress.history, best=progress.best)
    callbacks = [Checkpoint(engine), *callbacks] if engine.world.is_main else list(callbacks)
    first = progress.stage
    fire(callbacks, "on_fit_begin", fit)
    try:
        with deferred_interrupt(fit, engine.world.is_distributed):
            for index in range(first, len(engine.stages)):
                enter_stage(engine, index, resume if index == first else None)
                fit.stage_index = index
                fire(callbacks, "on_stage_begin", fit)
                run_stage(engine, fit, callbacks)
                if fit.interrupted:
                    fire(callbacks, "on_interrupt", fit)
                if fit.interrupted or fit.stop_reason:
                    break
    finally:
        fire(callbacks, "on_fit_end", fit)
    _check_ranks_agree(engine)
    return FitResult(history=progress.history, best_epoch=progress.best.epoch,
                     stopped_early=fit.stop_reason is not None and not fit.interrupted,
                     interrupted=fit.interrupted, seconds=engine.now() - started, model=engine.shipped_model(),
                     trained_epochs=round(progress.trained_epochs, 2))


def enter_stage(engine: TorchEngine, index: int, resume: dict[str, Any] | None) -> None:
    """Stage ``index``'s optimiser and schedule: fresh, or (``resume``) as the checkpoint left them."""
    engine.optimizer, engine.scheduler = start_stage(engine, engine.stages[index])
    engine.lookahead = Lookahead(engine.model) if engine.config.lookahead else None
    if resume is None:
        engine.progress.enter_stage(index)
    else:
        engine.restore_stage(resume)


def run_stage(engine: TorchEngine, fit: FitState, callbacks: list[Callback]) -> None:
    """Epochs of the current stage from ``engine.progress``, until it ends or a callback stops the fit.

    A stage whose length follows the budget is re-planned after each
    epoch, before the epoch's checkpoint, so a resume goes on with it.
    """
    progress, clock = engine.progress, engine.stage_clock
    probe = fit.stage.trainable == "head" and engine.probe.used and progress.stage_step == 0
    fit.fits_budget = follows_budget(engine, fit.stage)
    fit.epochs_in_stage = 1 if probe else math.ceil(clock.total / len(engine.train_loader))
    # the speed a re-plan goes by: wall time per step since the last one (validation, checkpoints included)
    since, since_step = engine.now(), progress.stage_step
    while progress.stage_step < clock.total:
        fit.epoch, fit.epoch_in_stage = progress.epoch + 1, progress.epoch_in_stage + 1
        row = probe_epoch(engine, fit, callbacks) if probe else run_epoch(engine, fit, callbacks)
        if row is None:  # interrupted mid-epoch
            return
        replanned = None
        if fit.fits_budget and fit.stop_reason is None and progress.stage_step < clock.total:
            replanned = replan(engine, fit, (engine.now() - since) / (progress.stage_step - since_step))
            since, since_step = engine.now(), progress.stage_step
        end_epoch(engine, fit, callbacks, row)
        if replanned:  # under the epoch's own line
            log.info(replanned)
        if fit.interrupted or fit.stop_reason:
            return


def run_epoch(engine: TorchEngine, fit: FitState, callbacks: list[Callback]) -> dict[str, Any] | None:
    """One epoch (the rest of one, after a resume) of training steps; its history row, or None if interrupted.

    A stop asked for during the epoch (a stalled budget run) ends it after the current step.
    """
    progress, loader = engine.progress, engine.train_loader
    first_batch = progress.batch
    set_train_mode(engine.model, engine.head, fit.stage)
    loader.set_epoch(progress.epoch, start_batch=progress.batch)
    steps = min(len(loader), engine.stage_clock.total - progress.stage_step + progress.batch)
    tally = EpochTally(engine.now())
    fit.steps, fit.step, fit.images, fit.loss, fit.accuracy = steps, progress.batch, 0, 0.0, 0.0
    fire(callbacks, "on_epoch_begin", fit)
    for images, targets in take(loader, steps - progress.batch):
        run_step(engine, fit, images, targets, tally)
        fire(callbacks, "on_step_end", fit)
        agree(engine, fit)
        if fit.interrupted and progress.batch < steps:
            return None  # mid-epoch; at an epoch's end the row and checkpoint come first
        if fit.stop_reason is not None:
            break
    return _epoch_done(engine, fit.stage, tally, first_batch)


def run_step(engine: TorchEngine, fit: FitState, images: torch.Tensor, targets: torch.Tensor,
             tally: EpochTally) -> None:
    """One training step at the schedule's position, and what follows it: the schedule, lookahead, EMA."""
    stage, progress, clock = fit.stage, engine.progress, engine.stage_clock
    seed = _seed_for(engine.config.seed, progress.epoch, progress.batch, 7)
    freeze_whitening_bias(engine, stage, progress.stage_step)
    if at_low_res(engine, stage, progress.stage_step):
        images = downscale(images, engine.config)
    loss, correct = train_step(engine, images, targets, seed, engine.optimizer)
    engine.scheduler.step()
    progress.step_done()
    if engine.lookahead is not None:
        engine.lookahead.step(engine.model, progress.stage_step, clock.progress(progress.stage_step))
    if engine.ema is not None:
        update_ema(engine.ema, engine.model, engine.config, progress.stage_step, clock.total)
    tally.add(loss, correct, len(images))
    fit.step, fit.images, fit.loss, fit.accuracy = progress.batch, tally.seen, tally.mean_loss, tally.accuracy
    fit.step_loss = loss


def probe_epoch(engine: TorchEngine, fit: FitState, callbacks: list[Callback]) -> dict[str, Any]:
    """The whole probe stage as one fit on cached embeddings (an epoch without steps); its history row."""
    fit.steps = fit.step = fit.images = 0
    fire(callbacks, "on_epoch_begin", fit)
    row = engine.probe.fit()
    engine.progress.epoch_done(1.0)
    engine.progress.stage_step = steps_in(fit.stage, len(engine.train_loader))
    return row


def end_epoch(engine: TorchEngine, fit: FitState, callbacks: list[Callback], row: dict[str, Any]) -> None:
    """The epoch's row into the history, the best epoch's weights kept, ``on_epoch_end`` fired, ranks agreed."""
    progress = engine.progress
    row["planned_epochs"] = planned_epochs(engine)
    progress.history.append(row)
    fit.row = row
    fit.last_epoch = progress.stage_step >= engine.stage_clock.total and fit.stage is engine.stages[-1]
    if progress.best.update(row, engine.config.monitor):
        engine.best_weights = copy.deepcopy(engine.evaluated_model().state_dict())
    fire(callbacks, "on_epoch_end", fit)
    agree(engine, fit)


def _epoch_done(engine: TorchEngine, stage: Stage, tally: EpochTally, first_batch: int) -> dict[str, Any]:
    """The epoch's row (its figures summed over every rank's images); the progress moves to the next epoch."""
    seconds = engine.now() - tally.started
    tally.loss, tally.correct, seen = distributed.sum_across([tally.loss, tally.correct, tally.seen], engine.device)
    tally.seen = int(seen)  # every rank's images: the epoch's figures are the global batch's
    row = epoch_row(engine, stage, tally.mean_loss, tally.accuracy, engine.optimizer.param_groups[-1]["lr"],
                    seconds, tally.seen)
    engine.progress.epoch_done((engine.progress.batch - first_batch) / len(engine.train_loader))
    return row


def agree(engine: TorchEngine, fit: FitState) -> None:
    """Every rank leaves the loop at the same step: interrupted if any rank was, stopped if rank 0 stopped.

    A signal counts only here: the loop's exits read ``fit.interrupted``,
    which changes at these shared points alone.
    """
    requested = fit.interrupted or fit.signalled
    if not engine.world.is_distributed:
        if requested:
            fit.interrupt()
        return
    interrupted, stopped = distributed.agree(requested, fit.stop_reason is not None, engine.device)
    if interrupted:
        fit.interrupt()
    if stopped and fit.stop_reason is None:
        fit.stop("stopped by rank 0")


def _check_ranks_agree(engine: TorchEngine) -> None:
    """In a distributed run: every rank's buffers are rank 0's, and every rank ends with the same weights."""
    if engine.world.is_distributed:
        distributed.share_buffers(engine.model)
        digest = distributed.same_weights_everywhere(engine.model.state_dict())
        log.info("%d processes ended with the same weights (sha256 %s)", engine.world.size, digest[:16])


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
