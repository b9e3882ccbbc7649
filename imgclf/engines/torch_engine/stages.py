"""A stage's set-up: which parameters learn, its optimiser and schedule, the module a step calls, the train mode."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from imgclf.engines.budget import StageClock
from imgclf.engines.contract import Stage, warmup_steps
from imgclf.engines.optim import build_optimizer, build_scheduler, parameter_groups

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine

Optimiser = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]


def steps_in(stage: Stage, steps_per_epoch: int) -> int:
    return max(1, math.ceil(stage.epochs * steps_per_epoch))


def start_stage(engine: TorchEngine, stage: Stage) -> Optimiser:
    """Freeze what ``stage`` does not train; its optimiser, schedule (``engine.stage_clock``) and step module."""
    head_ids = {id(parameter) for parameter in engine.head.parameters()}
    if stage.trainable == "tail":
        assert engine.tail is not None
        head_ids |= {id(parameter) for parameter in engine.tail.model.parameters()}  # the tail learns with the head
        engine.train_loader = engine.tail.loader()  # batches of kept activations, not images
    for parameter in engine.model.parameters():
        learns = stage.trainable == "all" or id(parameter) in head_ids
        parameter.requires_grad_(learns and engine.trainable[id(parameter)])
    config = engine.config
    groups = parameter_groups(engine.model, engine.head, config, stage.backbone_lr_scale, stage.trainable,
                              stage.lr_scale)
    optimizer = build_optimizer(groups, config)
    engine.forward = step_module(engine, stage)
    total = steps_in(stage, len(engine.train_loader))
    warmup = warmup_steps(config, stage, engine.stages, len(engine.train_loader), total)
    engine.stage_clock = StageClock.of(total)
    return optimizer, build_scheduler(optimizer, engine.stage_clock, warmup, config.schedule)


def step_module(engine: TorchEngine, stage: Stage) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a training step of ``stage`` calls: the step module, data-parallel across ranks, compiled if asked.

    Made per stage because DistributedDataParallel reduces exactly the
    parameters that need gradients when it is made (the head alone in a
    head stage); making it also copies rank 0's weights to every rank.
    """
    module: nn.Module = (engine.tail.model if stage.trainable == "tail" and engine.tail is not None
                         else StepModel(engine.model, head_only=stage.trainable == "head"))
    if engine.world.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(
            module, device_ids=[engine.world.local_rank] if engine.device.type == "cuda" else None)
    return torch.compile(module) if engine.config.compile else module


def set_train_mode(model: nn.Module, head: nn.Module, stage: Stage) -> None:
    """Train mode for what ``stage`` trains; BatchNorm statistics of what it keeps fixed stay as they are."""
    if stage.trainable == "tail":  # BatchNorm statistics frozen, as fine-tuning keeps them
        model.eval()
        return
    if stage.trainable == "head":
        model.eval()  # frozen backbone: BatchNorm statistics stay as the weights had them
        head.train()
        return
    model.train()
    if stage.name == "finetune":
        # Pretrained BatchNorm statistics stay frozen while fine-tuning (Keras's transfer-learning
        # advice): small batches of a small dataset would otherwise replace ImageNet's statistics
        # with noisy ones and shift every feature the head was fitted on.
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class StepModel(nn.Module):
    """What one training step runs: the whole model, or (a head stage) the frozen backbone under no_grad and the head.

    One module for both, so that DistributedDataParallel has one thing to
    wrap whatever the stage trains.
    """

    def __init__(self, model: nn.Module, head_only: bool) -> None:
        super().__init__()
        self.model = model
        self.head_only = head_only

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            with torch.no_grad():
                features = self.model.forward_features(images)  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it
            return self.model.forward_head(features)  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it
        return self.model(images)
