"""``--time-budget`` re-plans the schedule from the epochs' measured speed and always ends it.

The machine's speed is simulated: the budget's clock is a fake one (swapped
in for :data:`imgclf.engines.budget.CLOCK`) that a callback advances after
each training step, so every run sees the same seconds, without sleeping.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import TINY_FASTNET, FakeClock

import imgclf
from imgclf.engines.budget import StageClock, epochs_that_fit
from imgclf.engines.callbacks import Callback, FitState
from imgclf.engines.optim import lr_factor
from imgclf.training import TrainResult

# EMA off and lookahead on, so that the schedule's end (lookahead's last average) is part of every run
BUDGET = dict(TINY_FASTNET, ema=False, lookahead=True, whitening_bias_epochs=1.0)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """What imgclf logged since the last call (then forgotten)."""
    text = caplog.text
    caplog.clear()
    return text



class Slowdown(Callback):
    """A machine whose load changes: ``first`` seconds more per step in epoch 1, ``later`` from epoch 2 on."""

    def __init__(self, clock: FakeClock, first: float, later: float) -> None:
        self.clock, self.first, self.later = clock, first, later

    def on_step_end(self, fit: FitState) -> None:
        self.clock.advance(self.first if fit.epoch == 1 else self.later)


def end_lr(run: TrainResult) -> float:
    """The learning rate a finished schedule ends on (the last epoch's row records the head's)."""
    return run.config.lr * lr_factor(1, 1, 0, run.config.schedule)


def test_a_replan_keeps_the_schedule_s_position_and_ends_it_on_the_new_last_step() -> None:
    clock = StageClock.of(100)
    assert [clock.position(step) for step in (0, 37, 99, 100)] == [0.0, 37.0, 99.0, 100.0]  # no re-plan: the step
    rates = [lr_factor(clock.position(step), 100, 23, "onecycle") for step in range(41)]
    clock.replan(40, 160)  # faster than planned: the 60 planned steps left take 120
    assert clock.position(40) == 40.0 and clock.position(100) == 70.0 and clock.progress(160) == 1.0
    rates += [lr_factor(clock.position(step), 100, 23, "onecycle") for step in range(41, 161)]
    clock.replan(100, 110)  # then slower: the 30 left take 10
    assert clock.position(100) == 70.0 and clock.position(110) == 100.0
    rates = rates[:101] + [lr_factor(clock.position(step), 100, 23, "onecycle") for step in range(101, 111)]
    falls = [before - after for before, after in zip(rates[23:], rates[24:])]
    # no jump at either re-plan: after the warm-up the rate falls every step, at most by 3 planned steps' fall
    assert min(falls) > 0 and max(falls) <= 3 * (1 - 0.05) / (100 - 23) + 1e-12
    assert rates[-1] == lr_factor(100, 100, 23, "onecycle")  # the schedule's end value


def test_the_epochs_that_fit_are_at_least_a_tenth_so_an_overrun_run_still_ends_its_schedule() -> None:
    assert epochs_that_fit(212.0, 39.1) == 5.4 and epochs_that_fit(-30.0, 39.1) == 0.1


@pytest.mark.slow
def test_epochs_three_times_slower_after_the_first_still_end_the_schedule_within_the_budget(
        colours: Path, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgclf")
    run = imgclf.train(colours, out=tmp_path / "run", time_budget="5s", callbacks=[Slowdown(clock, 0.1, 0.3)],
                       **BUDGET)
    planned = [row["planned_epochs"] for row in run.history]
    assert planned[1] < planned[0]  # re-planned down once the epochs slowed
    assert run.metrics["budget_epochs_trained"] == planned[-1] < run.metrics["budget_epochs_planned"]
    assert run.history[-1]["lr"] == pytest.approx(end_lr(run))
    assert sum(row["seconds"] for row in run.history) < 5 * 1.1
    said = logged(caplog)
    assert "re-planned: " in said and "time budget" not in said.replace("time budget 5s:", "")  # no stop


@pytest.mark.slow
def test_epochs_faster_than_planned_train_more_epochs_with_no_jump_in_the_learning_rate(
        colours: Path, tmp_path: Path, clock: FakeClock) -> None:
    run = imgclf.train(colours, out=tmp_path / "run", time_budget="6s", callbacks=[Slowdown(clock, 0.3, 0.1)],
                       **BUDGET)
    planned = [row["planned_epochs"] for row in run.history]
    assert planned[-1] > planned[0]  # more than epoch 1's speed promised
    assert run.metrics["budget_epochs_trained"] == planned[-1]
    rates = [row["lr"] for row in run.history]
    peak = rates.index(max(rates))
    assert all(before >= after for before, after in zip(rates[peak:], rates[peak + 1:]))  # no jump back up
    assert rates[-1] == pytest.approx(end_lr(run))


class OverrunInEpochTwo(Callback):
    """Spends the whole budget in epoch 2's last step; with ``cut``, then interrupts (a kill after the re-plan)."""

    def __init__(self, clock: FakeClock, seconds: float, cut: bool) -> None:
        self.clock, self.seconds, self.cut = clock, seconds, cut

    def on_step_end(self, fit: FitState) -> None:
        if fit.epoch == 2 and fit.step == fit.steps:
            self.clock.advance(self.seconds)

    def on_epoch_end(self, fit: FitState) -> None:
        if self.cut and fit.epoch == 2:
            fit.interrupt()


@pytest.mark.slow
def test_a_budget_run_interrupted_after_a_replan_resumes_on_the_replanned_schedule(
        colours: Path, tmp_path: Path, clock: FakeClock) -> None:
    whole = imgclf.train(colours, out=tmp_path / "whole", time_budget="3s",
                         callbacks=[OverrunInEpochTwo(clock, 3.0, False)], **BUDGET)
    cut = imgclf.train(colours, out=tmp_path / "cut", time_budget="3s", callbacks=[OverrunInEpochTwo(clock, 3.0, True)],
                       **BUDGET)
    assert cut.interrupted and [row["epoch"] for row in cut.history] == [1, 2]
    replanned = cut.history[-1]["planned_epochs"]
    assert replanned < 2.5  # the budget is spent: the least that ends the schedule, a tenth of an epoch
    resumed = imgclf.train(resume=tmp_path / "cut")
    for run in (whole, resumed):
        assert [row["epoch"] for row in run.history] == [1, 2, 3]
        assert [row["planned_epochs"] for row in run.history[1:]] == [replanned, replanned]
        assert run.metrics["budget_epochs_trained"] == replanned
        assert run.history[-1]["lr"] == pytest.approx(end_lr(run))
