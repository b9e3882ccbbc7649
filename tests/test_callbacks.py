"""The training events a callback sees, the bookkeeping callbacks that stop a run, and the engine registry."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import TINY_FASTNET, run_cli

import imgclf
from imgclf.backends import RECORDS as REGISTERED
from imgclf.config import BACKENDS
from imgclf.engines.callbacks import Callback, FitState, TimeBudget
from imgclf.engines.registry import get_backend
from imgclf.errors import ImgclfError


class Recorder(Callback):
    """Every event with the epoch and step it came at."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def _record(self, name: str, fit: FitState) -> None:
        self.events.append((name, fit.epoch, fit.step))

    def on_fit_begin(self, fit: FitState) -> None:
        self._record("fit_begin", fit)

    def on_stage_begin(self, fit: FitState) -> None:
        self._record(f"stage_begin {fit.stage.name}", fit)

    def on_epoch_begin(self, fit: FitState) -> None:
        self._record("epoch_begin", fit)

    def on_step_end(self, fit: FitState) -> None:
        self._record("step_end", fit)

    def on_epoch_end(self, fit: FitState) -> None:
        assert fit.row is not None and fit.row["epoch"] == fit.epoch and fit.history[-1] is fit.row
        self._record("epoch_end", fit)

    def on_interrupt(self, fit: FitState) -> None:
        self._record("interrupt", fit)

    def on_fit_end(self, fit: FitState) -> None:
        self._record("fit_end", fit)


def epoch_events(epoch: int) -> list[tuple[str, int, int]]:
    return [("epoch_begin", epoch, 0), *[("step_end", epoch, step) for step in (1, 2, 3)], ("epoch_end", epoch, 3)]


@pytest.mark.slow
def test_a_callback_sees_every_event_in_order(colours: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    run = imgclf.train(colours, out=tmp_path / "run", epochs=2, callbacks=[recorder], **TINY_FASTNET)
    assert recorder.events == [("fit_begin", 0, 0), ("stage_begin train", 0, 0), *epoch_events(1),
                               *epoch_events(2), ("fit_end", 2, 3)]
    assert run.model_dir is not None and len(run.history) == 2


class StopAfter(Callback):
    """Ends the run as finished after ``epoch``, the way a pruner or a custom rule would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, fit: FitState) -> None:
        if fit.epoch == self.epoch:
            fit.stop("enough")


@pytest.mark.slow
def test_a_callback_that_stops_ends_a_complete_run_with_a_bundle(colours: Path, tmp_path: Path) -> None:
    run = imgclf.train(colours, out=tmp_path / "run", epochs=5, callbacks=[StopAfter(2)], **TINY_FASTNET)
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert not run.interrupted and (run.model_dir / "weights.safetensors").is_file()
    assert [row["epoch"] for row in csv.DictReader(open(run.run_dir / "metrics.csv"))] == ["1", "2"]


@pytest.mark.slow
def test_the_budget_guard_stops_a_stalled_run_after_the_step_it_is_in(colours: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    run = imgclf.train(colours, out=tmp_path / "run", epochs=4, callbacks=[TimeBudget(1e-6), recorder], **TINY_FASTNET)
    assert len(run.history) == 1 and run.model_dir is not None
    assert recorder.events[-3:] == [("step_end", 1, 1), ("epoch_end", 1, 1), ("fit_end", 1, 1)]


@pytest.mark.slow
def test_an_interrupting_callback_leaves_a_resumable_run(colours: Path, tmp_path: Path) -> None:
    class InterruptAfterFirstEpoch(Recorder):
        def on_epoch_end(self, fit: FitState) -> None:
            super().on_epoch_end(fit)
            fit.interrupt()

    recorder = InterruptAfterFirstEpoch()
    cut = imgclf.train(colours, out=tmp_path / "run", epochs=3, callbacks=[recorder], **TINY_FASTNET)
    assert cut.interrupted and cut.model_dir is None
    assert [name for name, _, _ in recorder.events][-3:] == ["epoch_end", "interrupt", "fit_end"]
    resumed = imgclf.train(resume=tmp_path / "run")
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3] and resumed.model_dir is not None


def test_every_configurable_backend_is_registered() -> None:
    assert set(REGISTERED) == set(BACKENDS)


def test_an_unknown_backend_is_a_one_line_error_naming_the_registered_ones() -> None:
    with pytest.raises(ImgclfError) as error:
        get_backend("jax")
    assert str(error.value) == "--backend jax is not known; choose one of torch, tensorflow"


def test_the_cli_refuses_an_unknown_backend_without_a_traceback(colours: Path, tmp_path: Path) -> None:
    done = run_cli("train", str(colours), "--backend", "jax", "--out", str(tmp_path / "run"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--backend" in done.stderr and "torch" in done.stderr and "tensorflow" in done.stderr


def test_one_best_epoch_rule_turns_by_the_monitor_and_survives_a_checkpoint() -> None:
    from imgclf.engines.contract import BestEpoch, monitor_direction

    assert monitor_direction("val_loss") == "minimize" and monitor_direction("val_accuracy") == "maximize"
    by_loss, by_accuracy, unvalidated = BestEpoch(), BestEpoch(), BestEpoch()
    rows = [{"epoch": 1, "val_loss": 0.9, "val_accuracy": 0.5}, {"epoch": 2, "val_loss": 0.7, "val_accuracy": 0.4},
            {"epoch": 3, "val_loss": 0.8, "val_accuracy": 0.6}]
    for row in rows:
        by_loss.update(row, "val_loss")
        by_accuracy.update(row, "val_accuracy")
        unvalidated.update({"epoch": row["epoch"], "val_loss": None}, "val_loss")
    assert (by_loss.epoch, by_loss.stale) == (2, 1) and (by_accuracy.epoch, by_accuracy.stale) == (3, 0)
    assert unvalidated.epoch == 3  # no validation: the latest epoch is the best
    assert BestEpoch.from_state(by_loss.state_dict()) == by_loss
    assert BestEpoch.from_state({"score": None, "epoch": -1, "stale": 0}) == BestEpoch()  # an older checkpoint's


def test_the_torch_engine_s_progress_is_saved_and_restored_as_one_record() -> None:
    from imgclf.engines.torch_engine.progress import RunProgress

    progress = RunProgress(stage=1, epoch=4, batch=2, stage_step=7, epoch_in_stage=1, trained_epochs=3.5,
                           history=[{"epoch": 4, "val_accuracy": 0.5}])
    progress.best.update(progress.history[0], "val_accuracy")
    state = progress.state_dict()
    assert set(state) == {"position", "history", "best"}  # the checkpoint keys of earlier versions
    assert RunProgress.from_state(state) == progress
