"""Optimisers, parameter groups and learning-rate schedules for the PyTorch engine.

Weight decay goes on weight matrices and convolution kernels only: decaying
norm scales and biases pulls them toward zero for no benefit and is the
classic silent mistake of hand-written loops. Biases and norm parameters
may get a larger learning rate (``bias_lr_scale``, airbench's 64x), and the
backbone of a pretrained model a smaller one (``backbone_lr_scale``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from imgclf.config import TrainConfig


def parameter_groups(model: nn.Module, head: nn.Module, config: TrainConfig, backbone_scale: float,
                     trainable: str, stage_scale: float = 1.0) -> list[dict[str, object]]:
    """Groups for the optimiser: {backbone, head} x {decayed, not decayed}, each with its ``lr``.

    ``trainable`` is ``"all"`` or ``"head"`` (a probe: only the classifier learns).
    """
    head_ids = {id(parameter) for parameter in head.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        in_head = id(parameter) in head_ids
        if trainable == "head" and not in_head:
            continue
        groups.setdefault((in_head, parameter.ndim > 1), []).append(parameter)
    result = []
    for (in_head, decayed), parameters in sorted(groups.items()):
        lr = (config.lr * stage_scale * (1.0 if in_head else backbone_scale)
              * (1.0 if decayed else config.bias_lr_scale))
        weight_decay = config.weight_decay if decayed else 0.0
        result.append({"params": parameters, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay})
    return result


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step``.

    ``onecycle`` rises linearly from 0.2 to 1 during warm-up and then falls
    linearly to 0.05 (airbench's triangle); ``cosine`` rises from 0 and
    decays along a half cosine to 0; ``constant`` only warms up.
    """
    if warmup_steps > 0 and step < warmup_steps:
        start = 0.2 if schedule == "onecycle" else 0.0
        return start + (1.0 - start) * (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "onecycle":
        return 1.0 + (0.05 - 1.0) * progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule))
