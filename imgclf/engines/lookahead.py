"""airbench's lookahead: every few steps the weights are pulled back towards a slow copy of themselves.

Unlike an exponential moving average, which only watches the weights, the
slow copy is written back into the model, so training continues from the
averaged point. The pull is weak early on and grows as the cube of the
progress through the stage (airbench94: 0.95⁵ · progress³ every 5 steps),
and at the stage's last step the model becomes the slow copy, so the
weights shipped are the averaged ones. BatchNorm running statistics are
averaged too (every floating-point entry of the state dict), as in airbench.
"""

from __future__ import annotations

import torch
from torch import nn

LOOKAHEAD_EVERY = 5  # steps between pulls
LOOKAHEAD_PEAK = 0.95**5  # the slow copy's weight at the end of the stage


class Lookahead:
    """The slow copy of a model's state and the rule that pulls the model towards it."""

    def __init__(self, model: nn.Module) -> None:
        self.slow = {name: value.detach().clone() for name, value in model.state_dict().items()
                     if value.dtype.is_floating_point}

    def step(self, model: nn.Module, stage_step: int, progress: float) -> None:
        """After optimiser step ``stage_step`` (1-based), ``progress`` through the stage: pull every 5 steps, adopt at 1."""
        if progress >= 1.0:
            self._pull(model, 1.0)
        elif stage_step % LOOKAHEAD_EVERY == 0:
            self._pull(model, LOOKAHEAD_PEAK * progress**3)

    @torch.no_grad()
    def _pull(self, model: nn.Module, decay: float) -> None:
        """slow ← decay·slow + (1 − decay)·model, then model ← slow."""
        state = model.state_dict()
        for name, slow in self.slow.items():
            slow.lerp_(state[name], 1 - decay)
            state[name].copy_(slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.slow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.slow[name].copy_(value)
