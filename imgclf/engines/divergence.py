"""Stop a run that diverged, with one line, before anything is written from it.

A loss or weight that is NaN or infinite never recovers: every later step
and the bundle inherit it, and the run used to train on at chance and end
in a traceback when the bundle was loaded for scoring. :class:`DivergenceGuard`
watches what every engine already reports (each step's running loss, each
epoch's train and val loss, val being scored with the running BatchNorm
statistics) and :func:`check_finite_weights` checks the weights to ship,
so the engines' loops need no code of their own for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from imgclf.engines.callbacks import Callback, FitState
from imgclf.errors import ImgclfError

LIKELY_CAUSE = ("likely cause: a learning rate too high for this data, or images so plain (uniform colours, "
                "blank backgrounds) that normalisation amplifies rounding noise")
TO_TRY = "try a 10x lower --lr, --grad-clip 1, or another --model"


class Diverged(ImgclfError):
    """Training produced a non-finite loss or weight; the run is stopped and no bundle is written."""


def diverged(where: str, what: str) -> Diverged:
    """The one-line error: where it happened, what was not finite, the likely cause and what to try."""
    return Diverged(f"training diverged at {where}: {what}; no model was written ({LIKELY_CAUSE}; {TO_TRY})")


class DivergenceGuard(Callback):
    """Raise :class:`Diverged` at the first step whose loss, or epoch whose train/val loss, is not finite.

    The running mean of an epoch's losses turns non-finite at the first
    non-finite step, so watching ``fit.loss`` finds that step. Weights that
    overflowed while the training loss stayed finite (BatchNorm statistics
    are not used in training mode) show in the epoch's val loss.
    """

    def on_step_end(self, fit: FitState) -> None:
        if not math.isfinite(fit.loss):
            raise diverged(f"epoch {fit.epoch}, step {fit.step}", f"the training loss is {fit.loss}")

    def on_epoch_end(self, fit: FitState) -> None:
        row = fit.row or {}
        for name in ("train_loss", "val_loss"):
            value = row.get(name)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise diverged(f"the end of epoch {fit.epoch}", f"the {name.replace('_', ' ')} is {value}")


def check_finite_weights(model: Any) -> None:
    """Raise :class:`Diverged` if the weights to ship (a torch module's state, a Keras model's weights) are not finite."""
    if hasattr(model, "state_dict"):
        finite = all(torch.isfinite(tensor).all() for tensor in model.state_dict().values()
                     if tensor.is_floating_point())
    else:
        finite = all(np.isfinite(array).all() for array in map(np.asarray, model.get_weights())
                     if np.issubdtype(array.dtype, np.floating))
    if not finite:
        raise diverged("the end of training", "the weights to ship hold NaN or infinite values")
