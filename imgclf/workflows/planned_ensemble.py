"""``--ensemble MODEL@SIZE,...`` (and the planner's larger plans): several tail models, one run, one bundle.

The run directory holds the members' runs and the ensemble built from them::

    RUN/
      config.yaml, split.csv     the run's options and split: every member trains on this split
      runs/<i>-<model>-<size>/   each member's own run (config, split, checkpoints, bundle)
      model/                     the ensemble bundle (members copied in), as ``imgclf ensemble`` writes it
      ensemble.json, report.html weights, each member's scores beside the ensemble's; the report

Members train one after another, each with the photo recipe's tail; the
weights then come from the outputs each member kept on val, so
combining costs no forward pass. An interrupted run resumes where it
stopped: finished members are kept, an interrupted one continues from its
checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import TrainConfig
from imgclf.engines.callbacks import Callback
from imgclf.recipes import member_configs
from imgclf.runs import RunDirectory, user_options
from imgclf.training import TrainResult, new_run, plan, train

log = logging.getLogger(__name__)


def train_planned(config: TrainConfig, *, archive: str | Path | None = None, overwrite: bool = False,
                  callbacks: list[Callback] | None = None) -> TrainResult:
    """One training run, or ``--ensemble``'s (given, or the planner's choice for the budget) members and bundle."""
    from imgclf.distributed import current_world

    chosen_by_user = user_options(config)
    planned = plan(config, archive)
    if not planned[0].ensemble:
        return train(config, archive=archive, overwrite=overwrite, callbacks=callbacks, planned=planned)
    planned_config, dataset = planned
    run = new_run(current_world(), planned_config, dataset, overwrite, chosen_by_user)
    return train_ensemble(run, replace(planned_config, out=str(run.path)), callbacks)


def train_ensemble(run: RunDirectory, config: TrainConfig, callbacks: list[Callback] | None) -> TrainResult:
    """Train (or resume, or keep) each member in ``run``, then write the ensemble bundle beside them."""
    started = time.perf_counter()
    members = []
    configs = member_configs(config, run.path)
    for position, member in enumerate(configs, start=1):
        folder = RunDirectory(Path(member.out or ""))
        if _finished(folder):
            log.info(f"member {position} of {len(configs)}: {folder.path} is trained; kept")
        else:
            log.info(f"member {position} of {len(configs)}: {member.model} at {member.image_size}px")
            started = folder.config_file.is_file() and folder.split_file.is_file()  # else a folder made, nothing in it
            result = (train(member, resume=folder.path, callbacks=callbacks) if started
                      else train(member, overwrite=True, callbacks=callbacks))
            if result.interrupted:
                log.warning(f"interrupted; finished members are kept. Continue with: imgclf train --resume {run.path}")
                return TrainResult(run.path, None, config, [], {}, interrupted=True)
        members.append(folder.path)
    metrics, held_out = _combine(run, members)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    return TrainResult(run.path, run.model_dir, config, [], metrics, held_out_probabilities=held_out)


def _finished(member: RunDirectory) -> bool:
    """Whether the member's training ended: its held-out outputs, the last thing a finished run keeps, are there
    for its bundle (a bundle alone may be one whose calibration and scores were interrupted)."""
    from imgclf.deploy.metadata import weights_file_digest

    return member.model_dir.is_dir() and bool(member.read_held_out_logits(weights_file_digest(member.model_dir)))


def _combine(run: RunDirectory, members: list[Path]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fit the weights and write the bundle beside the member runs: the ensemble's metrics, and its probabilities
    on the held-out images by path (the report reads them instead of predicting again)."""
    from imgclf.workflows.ensemble import build_ensemble  # scipy: only when an ensemble is built

    result = build_ensemble(members, run.path, alongside=True)
    ensemble = result.scores["ensemble"]
    best = max(scores["val"]["accuracy"] for name, scores in result.scores.items() if name != "ensemble")
    log.info(f"ensemble of {len(members)}: val accuracy {ensemble['val']['accuracy']:.2%} "
             f"({ensemble['val']['accuracy'] - best:+.2%} over the best member); weights "
             + ", ".join(f"{name} {weight:.2f}" for name, weight in result.weights.items()))
    metrics: dict[str, Any] = {f"{split}_{name}": value for split, values in ensemble.items()
                               for name, value in values.items()}
    metrics.update({f"{split}_images": count for split, count in result.images.items()})
    metrics["ensemble"] = {"weights": result.weights, "scores": result.scores}
    return metrics, result.held_out_probabilities
