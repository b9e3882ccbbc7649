"""The PyTorch engine: train a model on a decoded cache, stage by stage, resumable at any batch.

Read it in this order, one job a module:

- :mod:`.engine`: :class:`TorchEngine`, what the contract asks (build, fit, fit to a budget, the bundle);
- :mod:`.model`: the model (pretrained weights, or the data's statistics and FastNet's whitening);
- :mod:`.loop`: the fit, top to bottom: fit -> stage -> epoch -> step, firing the callbacks' events;
- :mod:`.stages`: what a stage trains, its optimiser and schedule, and the step's module;
- :mod:`.step`: one training step (mixup, loss, backward, clipping);
- :mod:`.tricks`: the whitening-bias freeze, low-resolution epochs and EMA;
- :mod:`.probe`: the probe stage as one logistic-regression fit on cached embeddings;
- :mod:`.validation`: logits of a split (the validation scores), split across ranks;
- :mod:`.planning`: ``--time-budget``: measure, plan, re-plan;
- :mod:`.progress`: where a run is and its best epoch, saved in the checkpoint as one unit;
- :mod:`.interrupts`: Ctrl-C as a stop after the step, the checkpoint callback.

Every batch's shuffle, augmentation, mixup and dropout randomness is seeded
by (seed, epoch, batch), so a run resumed from a checkpoint (taken at an
epoch end or on Ctrl-C mid-epoch) ends with the same weights as an
uninterrupted one on a CPU.

A probe stage freezes the backbone including its BatchNorm statistics and
runs it under ``no_grad``: only the classifier learns, and the backward pass
costs nothing.

Under torchrun (:mod:`imgclf.distributed`) every rank runs this same loop:
the train loader hands each rank its share of every global batch (the same
seeded order everywhere, so the steps are one process's steps), each stage's
step module is wrapped in ``DistributedDataParallel`` (which averages the
gradients; the loss is weighted by the share's size, so the average is the
global batch's mean gradient even when shares differ by an image), and
validation and the probe's embedding pass are split by rank and gathered,
so every rank sees the same scores. Rank 0 alone writes checkpoints; an
interrupt on any rank and a stop decided by rank 0 are agreed after every
step, so all ranks leave the loop at the same step.
"""

from imgclf.engines.torch_engine.engine import TorchEngine
from imgclf.engines.torch_engine.model import regularisation_args

__all__ = ["TorchEngine", "regularisation_args"]
