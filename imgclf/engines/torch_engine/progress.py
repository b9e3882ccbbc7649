"""Where a run is: one record, saved in the checkpoint and restored from it as a unit.

The position (stage, epoch, batch, step within the stage, epochs trained),
the finished epochs' rows and the best epoch so far used to live in three
overlapping records kept in step by hand; :class:`RunProgress` is the one
the engine moves forward. Callbacks see it through
:class:`~imgclf.engines.callbacks.FitState`, which shares its history list
and its :class:`~imgclf.engines.contract.BestEpoch`. The checkpoint keys
(``position``, ``history``, ``best``) are those of earlier versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf.engines.contract import BestEpoch

POSITION = ("stage", "epoch", "batch", "stage_step", "epoch_in_stage", "trained_epochs")


@dataclass
class RunProgress:
    """The run's position, its history and its best epoch."""

    stage: int = 0  # index into the plan's stages
    epoch: int = 0  # epochs finished over the whole run
    batch: int = 0  # batches done in the current epoch
    stage_step: int = 0  # training steps done in the current stage
    epoch_in_stage: int = 0  # epochs finished in the current stage
    trained_epochs: float = 0.0  # over the whole run, fractions of a stage's epochs included
    history: list[dict[str, Any]] = field(default_factory=list)  # finished epochs' metrics.csv rows
    best: BestEpoch = field(default_factory=BestEpoch)

    def enter_stage(self, index: int) -> None:
        """Stage ``index`` begins from its first step (the epochs counted so far carry on)."""
        self.stage, self.batch, self.stage_step, self.epoch_in_stage = index, 0, 0, 0

    def step_done(self) -> None:
        self.batch += 1
        self.stage_step += 1

    def epoch_done(self, trained: float) -> None:
        """An epoch ended, ``trained`` of it (fractions: a resumed epoch, a stage ending mid-epoch) trained now."""
        self.trained_epochs += trained
        self.epoch += 1
        self.epoch_in_stage += 1
        self.batch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": {name: getattr(self, name) for name in POSITION}, "history": self.history,
                "best": self.best.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunProgress:
        return cls(**state["position"], history=list(state["history"]), best=BestEpoch.from_state(state["best"]))


@dataclass
class EpochTally:
    """Running sums of an epoch's training steps (this rank's, until the epoch's end sums them across ranks)."""

    started: float  # the engine's clock when the epoch began
    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss += float(loss) * count
        self.correct += float(correct)
        self.seen += count

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)
