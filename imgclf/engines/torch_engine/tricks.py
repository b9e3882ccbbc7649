"""The schedule's extras, each read at the step's position in the schedule: the whitening-bias freeze,
low-resolution epochs (``--low-res``) and the weights' exponential moving average (``--ema``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.config import TrainConfig
from imgclf.engines.contract import Stage
from imgclf.engines.torch_engine.stages import step_module

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine


def freeze_whitening_bias(engine: TorchEngine, stage: Stage, stage_step: int) -> None:
    """fastnet's whitening bias trains for ``--whitening-bias-epochs`` only (airbench: 3 of ~10 epochs).

    Past that point it gets no gradient, so the optimiser skips it and the
    first layer is fixed while the rest of the network settles on it. In a
    distributed run the step module is made again when that changes:
    DistributedDataParallel waits for a gradient of every parameter that
    needed one when it was made, and fails on the step the bias has none.
    """
    whiten = getattr(engine.model, "whiten", None)
    epochs = engine.config.whitening_bias_epochs
    if epochs is None or whiten is None or whiten.bias is None or stage.trainable != "all":
        return
    trains = engine.stage_clock.position(stage_step) < epochs * len(engine.train_loader)
    if whiten.bias.requires_grad != trains:
        whiten.bias.requires_grad_(trains)
        if engine.world.is_distributed:
            engine.forward = step_module(engine, stage)


def at_low_res(engine: TorchEngine, stage: Stage, stage_step: int) -> bool:
    """Whether step ``stage_step`` of ``stage`` trains on downscaled batches (``--low-res``, whole-network stages)."""
    config = engine.config
    return (config.low_res is not None and stage.trainable == "all"
            and engine.stage_clock.position(stage_step) < (config.low_res_epochs or 0.0) * len(engine.train_loader))


def downscale(images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The batch at ``--low-res`` pixels a side, antialiased: progressive resizing's early epochs.

    On a CPU a step costs about as much as its pixels, so an epoch at 24 px
    costs about half of one at 32 px; early epochs learn coarse features,
    which survive the switch to full size (the network ends in a global pool).
    """
    side = config.low_res
    assert side is not None  # called only with --low-res
    small = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return small.contiguous(memory_format=torch.channels_last) if config.channels_last else small


def new_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` that follows its weights' moving average (the shipped model with ``--ema``)."""
    ema = copy.deepcopy(model).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    return ema


def update_ema(ema: nn.Module, model: nn.Module, config: TrainConfig, stage_step: int, total_steps: int) -> None:
    """Move the average towards the current weights (buffers such as BatchNorm's counts are copied)."""
    # The average spans at most the last ~10% of the stage, so a short run is not shipped with
    # weights from its first steps; early on, the decay warms up to follow fast-moving weights.
    decay = min(config.ema_decay, 1 - 10 / max(total_steps, 20), (1 + stage_step) / (10 + stage_step))
    with torch.no_grad():
        for averaged, current in zip(ema.state_dict().values(), model.state_dict().values()):
            if averaged.dtype.is_floating_point:
                averaged.lerp_(current, 1 - decay)
            else:
                averaged.copy_(current)
