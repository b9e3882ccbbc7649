"""``--time-budget``'s arithmetic: the epochs that fit the seconds left, and a stage clock that can change length.

A budget run is planned twice over: before training from a few measured
steps (:mod:`imgclf.engines.torch_engine.planning`), and again after every epoch of a
whole-network stage from the speed of the epochs it actually trained, since
the opening steps are not the epochs' speed and a shared machine's load
changes mid-run. Both plans ask :func:`epochs_that_fit`.

A re-plan changes how many steps a stage has left, never where it is in
its schedule. :class:`StageClock` maps each training step to a *position*
in the schedule as first planned (step ``planned`` is its end): the
learning rate, lookahead's pull, the whitening-bias freeze and the
low-resolution epochs are all read at the position, so they keep their
share of the schedule, the learning rate has no jump at a re-plan (the
position at the re-plan's step does not move), and the schedule ends (lr
at its end value, lookahead's last average) at the stage's last step
however often it was re-planned. Without a re-plan a step's position is
the step itself, so a run without a budget is exactly what it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

MIN_EPOCHS = 0.1  # the least a plan trains: even an overrun budget ends its schedule, in a tenth of an epoch

Clock = Callable[[], float]  # seconds, from any origin
# The clock a run reads its budget (and its epochs' seconds) on. Tests swap in a fake one they advance, so a
# slow machine is simulated without sleeping; an engine takes the one set when it is made.
CLOCK: Clock = time.monotonic


@dataclass
class Budget:
    """``--time-budget``'s seconds, counted on ``now`` from ``started`` (the opening measurement included)."""

    seconds: float
    now: Clock
    started: float

    @classmethod
    def start(cls, seconds: float, now: Clock, spent: float = 0.0) -> Budget:
        """A budget that has already spent ``spent`` seconds (a resumed run's)."""
        return cls(seconds, now, now() - spent)

    def spent(self) -> float:
        return self.now() - self.started

    def left(self) -> float:
        return self.seconds - self.spent()


def epochs_that_fit(seconds_left: float, seconds_per_epoch: float) -> float:
    """Epochs of ``seconds_per_epoch`` that fit ``seconds_left``, to a tenth (at least :data:`MIN_EPOCHS`)."""
    return max(round(seconds_left / seconds_per_epoch, 1), MIN_EPOCHS)


@dataclass
class StageClock:
    """Where each step of a stage is in its schedule: ``planned`` positions spread over ``total`` steps.

    Positions from the last re-plan on (at step ``since_step``, position
    ``since_position``) are spread evenly over the steps left, so the
    schedule still ends at position ``planned`` on step ``total``.
    """

    planned: int  # steps of the schedule as the stage began: positions run from 0 to this
    total: int  # steps the stage trains (``planned`` until a re-plan)
    since_step: int = 0
    since_position: float = 0.0

    @classmethod
    def of(cls, steps: int) -> StageClock:
        return cls(planned=steps, total=steps)

    def position(self, step: int) -> float:
        """Step ``step``'s position in the schedule (the schedule's step as planned; ``planned`` from ``total`` on)."""
        if step >= self.total:
            return float(self.planned)
        rate = (self.planned - self.since_position) / (self.total - self.since_step)
        return self.since_position + (step - self.since_step) * rate

    def progress(self, step: int) -> float:
        """How far step ``step`` is through the schedule, from 0 to exactly 1 at its last step."""
        return self.position(step) / self.planned

    def replan(self, step: int, total: int) -> None:
        """From step ``step`` on, the rest of the schedule takes the steps up to ``total`` (at least one)."""
        if total <= step:
            raise ValueError(f"a re-plan at step {step} needs at least one step after it, not a total of {total}")
        self.since_position, self.since_step, self.total = self.position(step), step, total

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planned, self.total = int(state["planned"]), int(state["total"])
        self.since_step, self.since_position = int(state["since_step"]), float(state["since_position"])
