"""One training step: mixup/cutmix, the forward pass at the run's precision, the loss, backward and the update."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.data.augment import mix_batch
from imgclf.engines.contract import correct_predictions
from imgclf.models.device import autocast

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine


def loss_of(engine: TorchEngine, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss: class-weighted, label-smoothed cross-entropy (independent sigmoids for multi-label)."""
    logits = logits.float()
    if engine.data.multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=engine.class_weights)
    return F.cross_entropy(logits, targets, weight=engine.class_weights,
                           label_smoothing=engine.config.label_smoothing or 0.0)


def train_step(engine: TorchEngine, images: torch.Tensor, targets: torch.Tensor, seed: int,
               optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of the stage's parameters; the step's (detached) loss and its count of right predictions."""
    torch.manual_seed(seed)  # dropout and drop-path draw from the global generator
    mixed_targets = targets
    augment, data, config = engine.augment, engine.data, engine.config
    if augment.mixup > 0 or augment.cutmix > 0:
        soft = targets.float() if data.multilabel else F.one_hot(targets, len(data.classes)).float()
        images, mixed_targets = mix_batch(images, soft, augment, torch.Generator().manual_seed(seed))
    with autocast(engine.device, engine.precision):
        logits = engine.forward(images)
    loss = loss_of(engine, logits, mixed_targets)
    # DistributedDataParallel averages the ranks' gradients; weighting each rank's mean loss by its share
    # of the global batch makes that average the global batch's mean gradient (1 in one process)
    world = engine.world
    objective = loss * (len(images) * world.size / engine.global_batch) if world.is_distributed else loss
    if config.l1:  # L1 on the weights this stage trains (matrices and kernels: not norms and biases)
        weights = [p for group in optimizer.param_groups for p in group["params"] if p.ndim > 1]
        objective = loss + config.l1 * sum(weight.abs().sum() for weight in weights)
    optimizer.zero_grad(set_to_none=True)
    engine.scaler.scale(objective).backward()
    if config.grad_clip:
        engine.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(engine.model.parameters(), config.grad_clip)
    engine.scaler.step(optimizer)
    engine.scaler.update()
    return loss.detach(), correct_predictions(logits.detach(), targets, data.multilabel)
