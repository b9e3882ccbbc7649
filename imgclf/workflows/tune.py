"""``tune``: an Optuna study whose trials are ordinary training runs, stored so that it resumes and can be shared.

Each trial trains one run into ``OUT/trials/NNN`` through
:func:`imgclf.training.train` with the fixed options (and the photo
planner's choice, made once) plus the values the TPE sampler (seeded with
``--seed``) drew from the search space (:mod:`imgclf.workflows.tune_space`:
only what the resolved recipe reads). A training callback reports every
epoch's validation score to the trial; when the median pruner says the
trial is hopeless it raises ``optuna.TrialPruned``, which ends the fit
before a bundle is written, so a pruned trial leaves a run with metrics and
checkpoints but no model. The objective is the written bundle's validation
accuracy (or loss with ``--monitor val_loss``).

The study lives in ``OUT/study.db`` (SQLite) unless ``--storage`` names
another Optuna storage (an RDB URL, or ``journal:PATH`` for a journal
file); rerunning the command resumes it, and several processes given the
same storage and ``--study-name`` share it. A trial left running by a dead
process of this machine is marked failed on the next start (RDB storages
also expire other machines' trials by heartbeat); failed trials do not
count towards ``--trials``.

Written to ``OUT`` after every trial: ``best.yaml`` (the best trial's
options, for ``imgclf train --config``), ``best/`` (its model bundle),
``tune.json`` and ``tune.html`` (leaderboard, optimisation history and
parameter importances).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from imgclf.config import TrainConfig, make_config, parse_duration
from imgclf.console import HEADING
from imgclf.data.inspect import imbalance_warning
from imgclf.engines.callbacks import Callback, FitState
from imgclf.engines.contract import monitor_direction, oriented
from imgclf.errors import ImgclfError
from imgclf.files import write_folder_atomic, write_text_atomic
from imgclf.runs import slug
from imgclf.training import TrainResult, plan, train
from imgclf.workflows.tracking import Tracker, check_tracker, tracked_run
from imgclf.workflows.tune_page import write_page
from imgclf.workflows.tune_space import (
    Space,
    check_recipe_reads,
    default_space,
    planned_options,
    read_space,
    suggest,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

PRUNE_WARMUP_EPOCHS = 2  # epochs a trial always runs before the pruner may stop it
HEARTBEAT_S = 60  # RDB storages: a trial whose worker was silent for 3 heartbeats is marked failed


@dataclass
class TuneResult:
    """A finished (or interrupted) search: where it is and its trials, best first."""

    out: Path
    study_name: str
    storage: str
    monitor: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool = False


class PruneOnValidation(Callback):
    """Report each epoch's ``--monitor`` to the trial; raise ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor

    def on_epoch_end(self, fit: FitState) -> None:
        import optuna

        assert fit.row is not None
        score = fit.row.get(self.monitor)
        if score is None:
            return
        self.trial.report(float(score), fit.epoch)
        if self.trial.should_prune():
            log.warning(f"trial {self.trial.number} pruned at epoch {fit.epoch}: {self.monitor} {score:.4f} is "
                        "behind the median of earlier trials")
            raise optuna.TrialPruned(f"epoch {fit.epoch}: {self.monitor} {score:.4f}")


def tune(data: str | Path, *, out: str | Path | None = None, trials: int | None = None,
         time_budget: str | None = None, storage: str | None = None, study_name: str | None = None,
         space_file: str | Path | None = None, startup_trials: int = 3, archive: str | Path | None = None,
         **options: Any) -> TuneResult:
    """Search the space with TPE until ``trials`` trials finished (counted over the whole study) or the budget is spent.

    ``options`` are training options fixed for every trial (``monitor`` and
    ``seed`` also pick the objective and seed the sampler).
    """
    budget = _check_stopping(trials, time_budget, startup_trials)
    fixed = {name: os.fspath(value) if isinstance(value, os.PathLike) else value  # stored as JSON in the study
             for name, value in options.items() if value is not None}
    fixed["data"] = str(data)
    base = make_config(**fixed)
    check_tracker(base.track)
    space, planned = _plan_space(base, set(fixed) - {"data"}, space_file, archive)
    folder = Path(out) if out is not None else Path("runs") / f"tune-{slug(str(data), 'data')}"
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    name = study_name or folder.resolve().name
    study = _open_study(url, name, base, startup_trials, shared=bool(storage))
    objective = _objective(data, space, {**fixed, **planned}, folder, archive, base)
    with tracked_run(base.track, f"tune {name}", tags={"command": "tune"}) as tracker:  # the trials are its children
        tracker.log_params({**fixed, "trials": trials, "time_budget": time_budget, "space": str(space_file or "default")})
        result = _search(study, objective, trials, budget, folder, url, base.monitor)
        _log_search(tracker, result, folder, base.monitor)
    return result


def _plan_space(base: TrainConfig, given: set[str], space_file: str | Path | None, archive: str | Path | None
                ) -> tuple[Space, dict[str, Any]]:
    """The search space (``space_file``'s, or ranges around the resolved recipe) and the options the planner chose.

    ``given`` are the options fixed by the user, which the space leaves alone.
    """
    space = read_space(Path(space_file), given) if space_file else None  # a bad space fails before data is read
    resolved, dataset = plan(base, archive)
    if space is None:
        imbalanced = imbalance_warning(dataset.split_items("train")) is not None  # then class weights may pay
        space = default_space(resolved, given, imbalanced=imbalanced, multilabel=dataset.multilabel)
    else:
        check_recipe_reads(space, resolved, f"--space {space_file}")
    return space, planned_options(base, resolved, given)


def _open_study(url: str, name: str, base: TrainConfig, startup_trials: int, shared: bool) -> optuna.Study:
    """The study ``name`` at ``url``, created or resumed, its dead trials failed and its sampler seeded.

    ``shared``: other workers may draw from the same study, so the seed also takes this process's id.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial reaches the user as our one-line error
    study = optuna.create_study(
        storage=_storage(url), study_name=name, load_if_exists=True,
        direction=monitor_direction(base.monitor),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=PRUNE_WARMUP_EPOCHS))
    _fail_dead_trials(study)
    # a resumed search must not redraw its first trials' values, and workers sharing a study must not draw the same
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials) + (os.getpid() if shared else 0))
    return study


def _objective(data: str | Path, space: Space, options: dict[str, Any], folder: Path, archive: str | Path | None,
               base: TrainConfig) -> Callable[[optuna.Trial], float]:
    """A trial's score: a training run in ``folder/trials/NNN`` of ``options`` and the values drawn from ``space``."""
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())
        values = suggest(trial, space)
        run = folder / "trials" / f"{trial.number:03d}"
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("options", {**options, **values})
        log.info(f"trial {trial.number}: " + ", ".join(f"{key}={_short(value)}" for key, value in values.items()),
                 extra=HEADING)
        config = make_config(**{**options, **values, "out": str(run)})
        result = _train_trial(trial, config, archive, base.monitor, base.track, values)
        if result.interrupted:
            raise KeyboardInterrupt
        score = result.metrics.get(base.monitor)
        if score is None:
            raise ImgclfError(f"{data}: the trials have no validation split to score; raise --val-fraction")
        return float(score)

    return objective


def _check_stopping(trials: int | None, time_budget: str | None, startup_trials: int) -> float | None:
    """The time budget in seconds (None: none); refuses a search that would never stop or start pruning wrongly."""
    if trials is None and time_budget is None:
        raise ImgclfError("give --trials N and/or --time-budget (e.g. 10m): when should the search stop?")
    if trials is not None and trials < 1:
        raise ImgclfError(f"--trials must be at least 1, got {trials}")
    if startup_trials < 0:
        raise ImgclfError(f"--startup-trials must be 0 or more, got {startup_trials}")
    return parse_duration(time_budget) if time_budget else None


def _train_trial(trial: optuna.Trial, config: TrainConfig, archive: str | Path | None, monitor: str,
                 track: str | None, values: dict[str, Any]) -> TrainResult:
    """One trial's training run, pruned on validation; with ``--track``, a child run of the search's."""
    with tracked_run(track, f"trial {trial.number:03d}", nested=True, tags={"command": "tune"}) as child:
        child.log_params(values)
        result = train(config, archive=archive, overwrite=True,
                       callbacks=[PruneOnValidation(trial, monitor), *child.callbacks()])
        child.log_metrics(result.metrics)
    return result


def _log_search(tracker: Tracker, result: TuneResult, folder: Path, monitor: str) -> None:
    """The search's best score, its outputs (not the study database) and its best bundle, registered."""
    tracker.log_metrics({f"best_{monitor}": result.best["score"]} if result.best else {})
    tracker.log_artifacts([path for path in folder.iterdir() if path.is_file() and path.suffix != ".db"])
    if (folder / "best" / "model.json").is_file():
        tracker.log_model(folder / "best", f"imgclf-{folder.resolve().name}")


def _search(study: optuna.Study, objective: Callable[[optuna.Trial], float], trials: int | None,
            budget: float | None, folder: Path, url: str, monitor: str) -> TuneResult:
    """Run trials one at a time until enough finished or the budget is spent; the outputs are rewritten after each."""
    started = time.monotonic()
    interrupted = False
    try:
        while _wanted(study, trials) and (budget is None or time.monotonic() - started < budget):
            study.optimize(objective, n_trials=1, catch=())
            _write_outputs(study, folder, url, monitor)
    except KeyboardInterrupt:
        interrupted = True
    return _write_outputs(study, folder, url, monitor, interrupted)


def _storage(url: str) -> optuna.storages.BaseStorage:
    """``journal:PATH`` as a journal file, anything else as an RDB URL (SQLite, PostgreSQL, MySQL)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and the documented way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S)
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as error:
        raise ImgclfError(f"--storage '{url}' is not a storage Optuna can open ({error}); give e.g. "
                          "sqlite:///study.db or journal:study.log") from None


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail_dead_trials(study: optuna.Study) -> None:
    """Mark failed the running trials whose process, on this machine, is gone (a killed search)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    storage = study._storage  # noqa: SLF001 - the study's own storage; Optuna has no public accessor
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                                           TrialState.FAIL)
            log.warning(f"trial {trial.number} was running in a process that ended; marked failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wanted(study: optuna.Study, trials: int | None) -> bool:
    """Whether to start another trial: finished plus running ones (other workers') are fewer than ``trials``."""
    from optuna.trial import TrialState

    if trials is None:
        return True
    counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return len(counted) < trials


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_outputs(study: optuna.Study, folder: Path, url: str, monitor: str,
                   interrupted: bool = False) -> TuneResult:
    """best.yaml, best/, tune.json and tune.html from the study as it stands."""
    from optuna.trial import TrialState

    rows = [_row(trial) for trial in study.get_trials(deepcopy=False)]
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    complete.sort(key=lambda row: -oriented(row["score"], monitor))
    rows.sort(key=lambda row: (row["state"] != "COMPLETE", complete.index(row) if row in complete else row["trial"]))
    best = complete[0] if complete else None
    if best is not None:
        options = {**study.trials[best["trial"]].user_attrs["options"], "out": None}
        write_text_atomic(folder / "best.yaml", yaml.safe_dump(make_config(**options).to_dict(), sort_keys=False))
        bundle = Path(best["run"]) / "model"
        if bundle.is_dir():  # a worker on another machine trained it there: its best/ holds it
            _copy_bundle(bundle, folder / "best")
    result = TuneResult(folder, study.study_name, url, monitor, rows, best, interrupted)
    summary = {"study_name": study.study_name, "storage": url, "monitor": monitor,
               "direction": monitor_direction(monitor), "best": best, "trials": rows,
               "counts": {state.name.lower(): sum(row["state"] == state.name for row in rows) for state in TrialState}}
    write_text_atomic(folder / "tune.json", json.dumps(summary, indent=2, default=str))
    write_page(study, folder, summary)
    return result


def _row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One leaderboard row; a pruned trial's score is its last reported epoch's."""
    score = trial.value
    if score is None and trial.intermediate_values:
        score = trial.intermediate_values[max(trial.intermediate_values)]
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    return {"trial": trial.number, "state": trial.state.name, "score": score, "params": trial.params,
            "seconds": None if seconds is None else round(seconds, 1), "run": trial.user_attrs.get("run")}


def _copy_bundle(bundle: Path, target: Path) -> None:
    """The best run's bundle at ``OUT/best`` (copied, so the trials folder can be cleaned), replaced atomically."""
    marker = target / "source.txt"
    if marker.is_file() and marker.read_text(encoding="utf-8") == str(bundle):
        return
    write_folder_atomic(target, lambda partial: (shutil.copytree(bundle, partial, dirs_exist_ok=True),
                                                 (partial / "source.txt").write_text(str(bundle), encoding="utf-8")))
