"""``--time-budget`` for the torch engine: measure a few steps, plan the schedule, re-plan it after each epoch.

The arithmetic (:func:`epochs_that_fit`, :class:`StageClock`, the
:class:`Budget` and its clock) is :mod:`imgclf.engines.budget`'s; this
module measures the engine's speed and decides what the schedule becomes.
Rank 0's measurement and plans are every rank's.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from imgclf import distributed
from imgclf.config import TrainConfig
from imgclf.engines.budget import Budget, epochs_that_fit
from imgclf.engines.callbacks import FitState
from imgclf.engines.contract import Stage
from imgclf.engines.torch_engine.interrupts import take
from imgclf.engines.torch_engine.stages import set_train_mode, start_stage
from imgclf.engines.torch_engine.step import train_step
from imgclf.engines.torch_engine.tricks import downscale

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine

log = logging.getLogger(__name__)


def measure_step_seconds(engine: TorchEngine, stage: Stage, steps: int = 4, low_res: bool = False) -> float:
    """Seconds per training step of ``stage`` (at ``--low-res`` with ``low_res``), measured on a few batches.

    The model is left as it was.
    """
    started = engine.now()
    saved = copy.deepcopy(engine.model.state_dict())
    optimizer, _ = start_stage(engine, stage)
    set_train_mode(engine.model, engine.head, stage)
    finished_at = []  # step ends, so the gaps include waiting for data as well as computing
    engine.train_loader.set_epoch(0)
    for index, (images, targets) in enumerate(take(engine.train_loader, steps + 1)):
        train_step(engine, downscale(images, engine.config) if low_res else images, targets, index, optimizer)
        finished_at.append(engine.now())
    engine.model.load_state_dict(saved)
    if len(finished_at) < 2:
        return finished_at[0] - started if finished_at else 0.0
    return float(np.median(np.diff(finished_at)))


def budget_config(engine: TorchEngine, budget: Budget) -> TrainConfig:
    """The config whose schedule fits what is left of ``budget``, from the measured speed of each stage.

    Warm-up and probe epochs keep their share of the schedule, so the whole
    schedule (not just its length) is fitted to the budget.
    """
    config = engine.config
    assert config.epochs is not None  # resolved by the recipe before training
    epoch_seconds, forward_per_image = _epoch_seconds(engine)
    if engine.probe.used:
        return _probe_then_finetune(engine, budget, epoch_seconds, forward_per_image)
    shares = {stage.trainable: stage.epochs / config.epochs for stage in engine.stages}
    per_epoch = sum(shares[kind] * seconds for kind, seconds in epoch_seconds.items())
    epochs = epochs_that_fit(budget.left(), per_epoch)
    if config.strategy == "two-stage":
        epochs = max(epochs, 2.0)
    scale = epochs / config.epochs
    log.info("time budget %s: %.1f s per epoch measured; training %g epochs", config.time_budget, per_epoch, epochs)

    def scaled(value: float | None, least: float = 0.0, digits: int = 2) -> float | None:
        return None if value is None else max(least, round(value * scale, digits))

    return replace(config, epochs=epochs, warmup_epochs=round((config.warmup_epochs or 0.0) * scale, 2),
                   whitening_bias_epochs=scaled(config.whitening_bias_epochs),
                   low_res_epochs=scaled(config.low_res_epochs), probe_epochs=scaled(config.probe_epochs, 1.0, 1))


def _epoch_seconds(engine: TorchEngine) -> tuple[dict[str, float], dict[str, float]]:
    """Measured seconds of an epoch (validation included) and of one image's forward pass, by stage kind.

    The tail's epochs are fixed (its recipe's) and a linear probe has no steps: neither is measured.
    """
    config = engine.config
    assert config.batch_size is not None  # resolved by the recipe before training
    steps_per_epoch, val_rows = len(engine.train_loader), len(engine.data.rows["val"])
    forward_per_image: dict[str, float] = {}
    epoch_seconds: dict[str, float] = {}
    for stage in engine.stages:
        if stage.trainable in epoch_seconds or stage.trainable == "tail" or (
                stage.trainable == "head" and engine.probe.used):
            continue
        step = measure_step_seconds(engine, stage)
        forward_per_image[stage.trainable] = step / config.batch_size / (1 if stage.trainable == "head" else 3)
        if config.low_res is not None and stage.trainable == "all":  # its share of the stage's steps is cheaper
            low = min(1.0, (config.low_res_epochs or 0.0) / stage.epochs)
            step = low * measure_step_seconds(engine, stage, low_res=True) + (1 - low) * step
        epoch_seconds[stage.trainable] = steps_per_epoch * step + val_rows * forward_per_image[stage.trainable]
    return epoch_seconds, forward_per_image


def _probe_then_finetune(engine: TorchEngine, budget: Budget, epoch_seconds: dict[str, float],
                         forward_per_image: dict[str, float]) -> TrainConfig:
    """A linear probe, then fine-tuning: only fine-tuning scales with the budget.

    The probe is one embedding pass over train + val (about a third of a
    training step per image) and a fit of a second or two, whatever its epochs.
    """
    config, data = engine.config, engine.data
    assert config.epochs is not None  # resolved by the recipe before training
    finetune = epoch_seconds.get("all")
    if finetune is None:  # a probe alone: nothing to fit to the budget
        return config
    probe = 0.0 if engine.probe.embeddings_cached() else (
        (len(data.rows["train"]) + len(data.rows["val"])) * forward_per_image["all"])
    epochs = (config.probe_epochs or 1.0) + epochs_that_fit(budget.left() - probe, finetune)
    log.info("time budget %s: probe about %.0f s, fine-tuning %.1f s per epoch measured; training %g epochs",
             config.time_budget, probe, finetune, epochs)
    return replace(config, epochs=epochs,
                   warmup_epochs=round((config.warmup_epochs or 0.0) * epochs / config.epochs, 2))


def follows_budget(engine: TorchEngine, stage: Stage) -> bool:
    """Whether ``stage``'s length is re-planned to the time budget: a whole-network stage that ends the run.

    The tail's epochs are its recipe's (the photo planner priced them) and a probe's are one fit or few.
    """
    return engine.budget is not None and stage.trainable == "all" and stage is engine.stages[-1]


def replan(engine: TorchEngine, fit: FitState, step_seconds: float) -> str | None:
    """Re-fit the rest of the stage to the budget's seconds left, at the speed of the epoch just trained.

    ``step_seconds`` is the wall time per step since the last re-plan
    (the epoch's validation pass and the previous one's checkpoint
    included). Rank 0's plan is every rank's, as the opening one is.
    Returns what to tell the user, None when the plan did not change.
    """
    assert engine.budget is not None
    clock = engine.stage_clock
    steps_per_epoch = len(engine.train_loader)
    per_epoch = step_seconds * steps_per_epoch
    left = engine.budget.left()
    step = engine.progress.stage_step
    total = distributed.broadcast_from_main(step + math.ceil(epochs_that_fit(left, per_epoch) * steps_per_epoch))
    if total == clock.total:
        return None
    clock.replan(step, int(total))
    fit.epochs_in_stage = math.ceil(clock.total / steps_per_epoch)
    return (f"re-planned: {planned_epochs(engine):g} epochs fit the {max(left, 0):.0f} s left "
            f"({per_epoch:.1f} s an epoch measured)")


def planned_epochs(engine: TorchEngine) -> float:
    """The run's epochs as now planned: its stages' epochs, the current stage's as re-planned (its steps)."""
    clock = engine.stage_clock
    current = engine.stages[engine.progress.stage]
    epochs = current.epochs if clock.total == clock.planned else clock.total / len(engine.train_loader)
    return round(sum(stage.epochs for stage in engine.stages if stage is not current) + epochs, 2)
