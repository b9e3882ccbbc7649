"""Experiment tracking in MLflow (``--track mlflow``): what TensorBoard cannot give a team's platform.

Where runs go is MLflow's own convention: ``MLFLOW_TRACKING_URI`` (and
``MLFLOW_EXPERIMENT_NAME``), else MLflow's default (``mlflow.db`` here). A
training run logs the resolved config as params, each epoch's row as
metrics (a :class:`~imgclf.engines.callbacks.Callback`), the final figures,
the report, the run's record and the bundle as artifacts, and the model as
a pyfunc flavour (:mod:`imgclf.workflows.mlflow_model`, loaded from code:
nothing is pickled) registered under ``imgclf-<run name>``, so that
``mlflow models serve -m models:/imgclf-<run>/1`` serves it. ``tune`` is a
parent run with a child per trial; ``evaluate`` logs its metrics and pictures.

MLflow is optional (``pip install 'imgclf[track]'``); asking for it without
it installed is one line naming what to install.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.config import TRACKERS
from imgclf.engines.callbacks import Callback, FitState
from imgclf.errors import ImgclfError

if TYPE_CHECKING:
    from imgclf.training import TrainResult

log = logging.getLogger(__name__)

EXPERIMENT = "imgclf"  # when MLFLOW_EXPERIMENT_NAME does not name one
RUN_RECORD = ("config.yaml", "choices.json", "metrics.csv", "split.csv", "report.html")  # logged beside the bundle
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
PACKAGE = Path(__file__).resolve().parents[1]  # imgclf's code, shipped inside the logged model


def require_mlflow() -> Any:
    """The mlflow module, or the one-line error that says how to get it."""
    try:
        import mlflow
    except ImportError:
        raise ImgclfError("--track mlflow needs MLflow, an optional extra: pip install 'imgclf[track]'") from None
    return mlflow


def check_tracker(track: str | None) -> None:
    """Refuse an unknown tracker or a missing MLflow before any work starts."""
    if track is None:
        return
    if track not in TRACKERS:
        raise ImgclfError(f"--track '{track}' is not one of {', '.join(TRACKERS)}")
    require_mlflow()


@contextlib.contextmanager
def tracked_run(track: str | None, name: str, *, nested: bool = False, tags: dict[str, str] | None = None
                ) -> Iterator[Tracker]:
    """An MLflow run for the block (a child of the active one with ``nested``); a tracker that does nothing without ``track``."""
    if track is None:
        yield Tracker(None)
        return
    check_tracker(track)
    mlflow = require_mlflow()
    if not nested and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=name, nested=nested, tags={"imgclf": "1", **(tags or {})}):
        yield Tracker(mlflow)


class Tracker:
    """Logs to the active MLflow run; every method does nothing when tracking is off (``mlflow`` None)."""

    def __init__(self, mlflow: Any) -> None:
        self.mlflow = mlflow

    @property
    def run_id(self) -> str | None:
        return self.mlflow.active_run().info.run_id if self.mlflow else None

    def callbacks(self) -> list[Callback]:
        return [EpochMetrics(self)] if self.mlflow else []

    def log_params(self, values: dict[str, Any]) -> None:
        if self.mlflow:  # MLflow params are strings; a dict or list becomes its repr
            self.mlflow.log_params({name: "none" if value is None else value for name, value in values.items()})

    def log_metrics(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.mlflow:
            self.mlflow.log_metrics(numeric(values), step=step)

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """Log each existing file or folder (a folder keeps its name) under ``folder``."""
        if not self.mlflow:
            return
        for path in paths:
            if path.is_dir():
                self.mlflow.log_artifacts(str(path), artifact_path=f"{folder}/{path.name}" if folder else path.name)
            elif path.is_file():
                self.mlflow.log_artifact(str(path), artifact_path=folder)

    def log_training(self, result: TrainResult) -> None:
        """A finished run's figures (``final_*``: the bundle's, beside the epochs'), record and bundle, and its pyfunc model."""
        if not self.mlflow or result.model_dir is None:
            return
        self.log_metrics({f"final_{name}": value for name, value in result.metrics.items()})  # the bundle's scores
        run_dir = Path(result.run_dir)
        self.log_artifacts([run_dir / name for name in RUN_RECORD], folder="run")
        self.log_artifacts([result.model_dir])
        self.log_model(result.model_dir, f"imgclf-{run_dir.name}")

    def log_model(self, bundle: Path, registered_name: str) -> None:
        """The bundle as an MLflow pyfunc model, registered as ``registered_name`` (a new version each time)."""
        if not self.mlflow:
            return
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        inputs = Schema([ColSpec("string", "path", required=False), ColSpec("string", "image", required=False)])
        with warnings.catch_warnings():  # advice to add type hints and an input example: the signature says it all
            warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
            self._log_pyfunc(bundle, registered_name, ModelSignature(inputs=inputs))
        log.info("MLflow: model registered as %s (run %s)", registered_name, self.run_id)

    def _log_pyfunc(self, bundle: Path, registered_name: str, signature: Any) -> None:
        self.mlflow.pyfunc.log_model(
            name="pyfunc", python_model=str(MODEL_CODE), artifacts={"bundle": str(bundle)},
            signature=signature,
            code_paths=[str(PACKAGE)], pip_requirements=_requirements(),
            registered_model_name=registered_name)


class EpochMetrics(Callback):
    """Each epoch's metrics.csv row as MLflow metrics at step = epoch; the resolved config as params at the start."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_fit_begin(self, fit: FitState) -> None:  # a resumed run is a new MLflow run: it logs them too
        self.tracker.log_params(fit.config.to_dict())

    def on_epoch_end(self, fit: FitState) -> None:
        if fit.row is not None:
            self.tracker.log_metrics({name: value for name, value in fit.row.items() if name != "epoch"},
                                     step=fit.epoch)


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in ``values``, nested dicts flattened as ``outer_inner``: what MLflow metrics can hold."""
    flat: dict[str, float] = {}
    for name, value in values.items():
        key = re.sub(r"[^\w\-. /]", "_", f"{prefix}{name}")  # the characters MLflow allows in a metric's name
        if isinstance(value, dict):
            flat.update(numeric(value, f"{key}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


def _requirements() -> list[str]:
    """imgclf's own pinned dependencies (not its extras): the environment ``mlflow models serve`` builds."""
    try:
        required = importlib.metadata.requires("imgclf") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return []
    return [line for line in required if "extra ==" not in line]
