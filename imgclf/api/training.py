"""Training: one run (in one process or N torchrun processes), a backend comparison, an ensemble, a search."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import ImgclfError

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.config import TrainConfig
    from imgclf.engines.callbacks import Callback
    from imgclf.training import TrainResult
    from imgclf.workflows.comparison import Comparison
    from imgclf.workflows.ensemble import EnsembleResult
    from imgclf.workflows.tune import TuneResult

log = logging.getLogger(__name__)


def train(
    data: str | Path | None = None,
    *,
    config: str | Path | None = None,
    archive: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    dry_run: bool = False,
    callbacks: list[Callback] | None = None,
    **options: object,
) -> TrainResult | TrainConfig:
    """Train a classifier on ``data`` and write its ``report.html``; every option is a :class:`~imgclf.config.TrainConfig` field.

    >>> run = imgclf.train("photos/", epochs=5)       # doctest: +SKIP
    >>> run.metrics["test_accuracy"]                  # doctest: +SKIP

    ``config`` is a YAML file of the same names (explicit options win);
    ``resume`` continues an interrupted run exactly; ``dry_run`` returns the
    resolved :class:`TrainConfig` without training; ``callbacks`` (subclasses
    of :class:`imgclf.engines.callbacks.Callback`) see every training event.
    """
    from imgclf.config import make_config
    from imgclf.distributed import current_world
    from imgclf.runs import RunDirectory
    from imgclf.training import plan
    from imgclf.training import train as run_training
    from imgclf.workflows.planned_ensemble import train_ensemble, train_planned
    from imgclf.workflows.tracking import check_tracker, tracked_run

    if resume is not None:
        if data is not None or options or config is not None:
            raise ImgclfError("--resume continues a run with its saved config; drop the other options")
        settings = RunDirectory(Path(resume)).read_config()
    else:
        settings = make_config(config, **({"data": str(data)} if data is not None else {}), **options)
    if dry_run and resume is None:
        return plan(settings, archive)[0]
    check_tracker(settings.track)  # a missing MLflow is said before the data is read
    name = Path(resume).name if resume is not None else Path(settings.out or str(settings.data)).name
    track = settings.track if current_world().is_main else None  # under torchrun, rank 0 alone logs
    with tracked_run(track, name, tags={"command": "train"}) as tracker:
        mine = [*(callbacks or []), *tracker.callbacks()]
        if resume is not None and settings.ensemble:
            result = _reported(train_ensemble(RunDirectory(Path(resume)), settings, mine))
        elif resume is not None:
            result = _reported(run_training(make_config(), resume=resume, callbacks=mine))
        else:
            result = _reported(train_planned(settings, archive=archive, overwrite=overwrite, callbacks=mine))
        tracker.log_training(result)
    return result


def train_processes(nproc: int, arguments: list[str], data: str | Path | None = None, *,
                    config: str | Path | None = None, archive: str | Path | None = None,
                    resume: str | Path | None = None, **options: object) -> int:
    """``imgclf train --nproc N``: check the run here, then run ``arguments`` as N torchrun processes; the exit code.

    The checks (data, options, backend, enough GPUs) run once, before any
    process starts, so a mistake is one line rather than N.
    """
    from imgclf.config import make_config
    from imgclf.distributed import check_nproc_device, launch, torchrun_command
    from imgclf.engines.registry import get_backend
    from imgclf.runs import RunDirectory
    from imgclf.training import plan

    torchrun_command(nproc, arguments)  # refuses --nproc below 1
    settings = (RunDirectory(Path(resume)).read_config() if resume is not None
                else make_config(config, **({"data": str(data)} if data is not None else {}), **options))
    get_backend(settings.backend).check_processes(nproc)
    check_nproc_device(nproc, settings.device)
    if settings.ensemble:  # the planner itself offers no ensemble to several processes (their members are tails)
        raise ImgclfError("this run is an ensemble (--ensemble, or the plan of --quality high or best): its tail "
                          "members train in one process; drop --nproc")
    if resume is None:
        plan(settings, archive)  # the data and every option, checked once
    return launch(nproc, arguments)


def _reported(run: TrainResult) -> TrainResult:
    """Write the run's ``report.html`` once it finished (workflows that train many runs call training directly)."""
    from imgclf.evaluation.run_report import report_run

    if run.model_dir is not None and not run.interrupted:  # no bundle on ranks other than 0
        page, _ = report_run(run.run_dir, known=run.held_out_probabilities)
        log.info(f"report: {page}")
    return run


def compare(data: str | Path, *, backends: str | list[str] = "torch,tensorflow", model: str = "tutorial-cnn",
            epochs: float = 10, out: str | Path | None = None, overwrite: bool = False,
            archive: str | Path | None = None, **options: object) -> Comparison:
    """Train ``model`` on each backend with the same recipe, seed and split; write ``OUT/comparison.html``.

    >>> imgclf.compare("photos/", epochs=10).html     # doctest: +SKIP
    """
    from imgclf.workflows.comparison import compare as run_comparison
    from imgclf.workflows.comparison import parse_backends

    names = parse_backends(backends if isinstance(backends, str) else ",".join(backends))
    return run_comparison(data, backends=names, model=model, epochs=epochs, out=out, overwrite=overwrite,
                          archive=archive, **options)


def ensemble(runs: Sequence[str | Path], out: str | Path, *, weights: str = "auto", overwrite: bool = False,
             report: bool = True, batch_size: int = 64) -> EnsembleResult:
    """Soft-voting ensemble of trained runs in ``out``: one model for load, predict, evaluate, serve, export.

    ``weights="fit"`` minimises the validation NLL over the simplex; ``"equal"`` averages; ``"auto"`` fits
    only where fitted weights beat equal ones on val images they were not fitted on (5-fold cross-fitting).
    Members may differ in architecture, input size and backend; their classes must match.
    """
    from imgclf.evaluation.run_report import report_run
    from imgclf.workflows.ensemble import build_ensemble

    result = build_ensemble(runs, out, weights=weights, overwrite=overwrite, batch_size=batch_size)
    if report:
        report_run(result.out, known=result.held_out_probabilities)
    return result


def tune(data: str | Path, *, out: str | Path | None = None, trials: int | None = None,
         time_budget: str | None = None, storage: str | None = None, study_name: str | None = None,
         space: str | Path | None = None, startup_trials: int = 3, archive: str | Path | None = None,
         **options: object) -> TuneResult:
    """Hyperparameter search with Optuna (TPE, median pruning); every trial is a training run in ``out/trials``.

    >>> study = imgclf.tune("photos/", trials=20, model="fastnet")   # doctest: +SKIP
    >>> study.best["params"]                                         # doctest: +SKIP

    Stops when ``trials`` trials of the study finished or ``time_budget``
    (e.g. ``"10m"``) is spent; rerunning resumes the study stored in
    ``out/study.db`` (or ``storage``: an Optuna RDB URL or ``journal:PATH``).
    ``space`` is a YAML search space (default: ranges around the model's
    recipe); ``options`` are training options fixed for every trial.
    """
    from imgclf.workflows.tune import tune as run_tune

    return run_tune(data, out=out, trials=trials, time_budget=time_budget, storage=storage, study_name=study_name,
                    space_file=space, startup_trials=startup_trials, archive=archive, **options)
