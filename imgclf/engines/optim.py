"""Optimisers, parameter groups and learning-rate schedules for the PyTorch engine.

Weight decay goes on weight matrices and convolution kernels only: decaying
norm scales and biases pulls them toward zero for no benefit and is the
classic silent mistake of hand-written loops. Norm parameters
may get a larger learning rate (``bias_lr_scale``, airbench's 64x on BatchNorm biases), and the
backbone of a pretrained model a smaller one (``backbone_lr_scale``).

``--optimizer muon`` (airbench94_muon's) updates the backbone's weight
matrices and conv filters by Muon, momentum orthogonalised by a
Newton-Schulz iteration, at ``--muon-lr``; everything else (the head,
biases) keeps Nesterov SGD, in the same optimizer so one schedule and one
checkpoint cover both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.engines.budget import StageClock

MUON_MOMENTUM = 0.6  # airbench94_muon's momentum for the filters (SGD keeps --momentum)
# Newton-Schulz coefficients of Muon's quintic iteration (Keller Jordan): steep at zero so that
# three steps bring every singular value of the update near 1
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3
# layers whose parameters get ``bias_lr_scale`` (never decayed)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def parameter_groups(model: nn.Module, head: nn.Module, config: TrainConfig, backbone_scale: float,
                     trainable: str, stage_scale: float = 1.0) -> list[dict[str, object]]:
    """Groups for the optimiser: {backbone, head} x {decayed, norm, other bias}, each with its ``lr``.

    ``bias_lr_scale`` multiplies the rate of normalisation layers' parameters
    only, as airbench's 64x does its BatchNorm biases: other biases (fastnet's
    whitening bias, a linear layer's) keep the base rate (evidence:
    benchmarks/results/airbench_reference.json, airbench94-45k-our-old-bias-groups against -new-bias-groups).
    ``trainable`` is ``"all"`` or ``"head"`` (a probe: only the classifier learns).
    """
    head_ids = {id(parameter) for parameter in head.parameters()}
    norm_ids = {id(parameter) for module in model.modules() if isinstance(module, NORMS)
                for parameter in module.parameters(recurse=False)}
    groups: dict[tuple[bool, str], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        in_head = id(parameter) in head_ids
        if trainable == "head" and not in_head:
            continue
        kind = "decayed" if parameter.ndim > 1 else "norm" if id(parameter) in norm_ids else "bias"
        groups.setdefault((in_head, kind), []).append(parameter)
    assert config.lr is not None and config.bias_lr_scale is not None  # resolved by the recipe before training
    result = []
    for (in_head, kind), parameters in sorted(groups.items()):
        lr = (config.lr * stage_scale * (1.0 if in_head else backbone_scale)
              * (config.bias_lr_scale if kind == "norm" else 1.0))
        weight_decay = config.weight_decay if kind == "decayed" else 0.0
        group = {"params": parameters, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay}
        if config.optimizer == "muon":
            orthogonalise = kind == "decayed" and not in_head
            group["orthogonalise"] = orthogonalise
            if orthogonalise:  # Muon keeps each weight's norm fixed instead of decaying it
                muon_lr = (config.muon_lr or 0.0) * stage_scale * backbone_scale
                group.update(lr=muon_lr, initial_lr=muon_lr, weight_decay=0.0, momentum=MUON_MOMENTUM)
        result.append(group)
    return result


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    assert config.lr is not None and config.momentum is not None  # resolved by the recipe before training
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer == "muon":
        return Muon(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def orthogonalise(update: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """An approximation of U Vᵀ for ``update`` = U S Vᵀ (2-D): the same directions, every singular value ≈ 1.

    Muon's quintic Newton-Schulz iteration, run in bfloat16 as in airbench
    (it only has to be roughly right), on the wide orientation of the matrix.
    """
    a, b, c = NEWTON_SCHULZ
    x = update.to(torch.bfloat16)
    x = x / (x.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked ``orthogonalise``, Nesterov SGD (coupled weight decay) for the rest.

    A Muon step (airbench94_muon): Nesterov momentum of the gradient, the
    weight rescaled to norm √(output channels), then a step of ``lr`` along
    the orthogonalised momentum (each filter bank flattened to a matrix).
    """

    def __init__(self, params: list[dict], lr: float, momentum: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=0.0, orthogonalise=False))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]  # Muon takes no closure
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                gradient = parameter.grad
                if group["weight_decay"]:
                    gradient = gradient.add(parameter, alpha=group["weight_decay"])
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(gradient)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(gradient)
                update = gradient.add(buffer, alpha=group["momentum"])
                if group["orthogonalise"]:
                    parameter.mul_(len(parameter) ** 0.5 / parameter.norm().clamp_min(1e-12))
                    update = orthogonalise(update.reshape(len(update), -1)).view_as(update)
                parameter.add_(update, alpha=-group["lr"])


def lr_factor(step: float, total_steps: int, warmup_steps: int, schedule: str | None) -> float:
    """Multiplier of the peak learning rate at ``step`` (a position on a :class:`StageClock`: it may be fractional).

    ``onecycle`` rises linearly from 0.2 to 1 during warm-up and then falls
    linearly to 0.05 (airbench's triangle); ``cosine`` rises from 0 and
    decays along a half cosine to 0 (so does a recipe that names none); ``constant`` only warms up.
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


def build_scheduler(optimizer: torch.optim.Optimizer, clock: StageClock, warmup_steps: int,
                    schedule: str | None) -> torch.optim.lr_scheduler.LambdaLR:
    """The stage's learning rate read at each step's position on ``clock`` (which a time budget may re-plan)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(clock.position(step), clock.planned, warmup_steps, schedule))
