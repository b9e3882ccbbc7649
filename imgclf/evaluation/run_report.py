"""Evaluate a run's bundle on its own held-out split and write its pictures, ``report.html`` and model card.

Called at the end of every training run and by ``imgclf report RUN``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imgclf.deploy.bundle import ENSEMBLE, read_bundle_info
from imgclf.deploy.classifier import Classifier
from imgclf.errors import ImgclfError
from imgclf.evaluation.evaluate import Evaluation, evaluate, evaluation_items
from imgclf.evaluation.model_card import write_model_card
from imgclf.evaluation.plots import plot_training_curves
from imgclf.evaluation.report import write_report
from imgclf.pictures import draw_augmentations, save_samples
from imgclf.runs import RunDirectory

log = logging.getLogger(__name__)



def report_run(run_dir: str | Path, *, label_issues: bool = True, known: Mapping[str, np.ndarray] | None = None
               ) -> tuple[Path, Evaluation | None]:
    """(report.html, the evaluation) for ``run_dir``; pictures go to ``RUN/plots`` and ``RUN/evaluation``.

    The bundle's ``MODEL_CARD.md`` is (re)written from the same evaluation.

    ``known``: probabilities the run's bundle already gave some images, by
    path (training's own held-out pass), which are then not predicted again.
    """
    run = RunDirectory(Path(run_dir))
    bundle = run.model_dir / "model.json"
    if bundle.is_file() and read_bundle_info(run.model_dir).kind == ENSEMBLE:  # no training curves of its own
        classifier = Classifier.load(run.path, allow_int8=False)  # the model's own figures, not an int8 file's
        items, split = evaluation_items(run.path, None, None)
        evaluation: Evaluation | None = evaluate(classifier, items, split, run.path / "evaluation",
                                                 label_issues=label_issues, known=known)
        write_model_card(run.model_dir, evaluation)
        return write_report(run.path, evaluation, {}, run.path / "report.html"), evaluation
    if not run.config_file.is_file():
        raise ImgclfError(f"{run.path} is not an imgclf run directory (no config.yaml); give runs/NAME")
    config = run.read_config()
    plots = run.path / "plots"
    pictures: dict[str, Path] = {}
    if run.metrics_file.is_file():
        with open(run.metrics_file, newline="", encoding="utf-8") as handle:
            history = list(csv.DictReader(handle))
        if history:
            pictures["curves"] = plot_training_curves(history, plots / "training_curves.png")
    dataset = run.read_split()
    train = dataset.split_items("train")
    if train:
        pictures["samples"] = save_samples(dataset.with_items(train), plots / "samples.png")
        try:
            pictures["augmentation"] = draw_augmentations(train[0], plots / "augmentation.png",
                                                          augment=config.augment or "none", seed=config.seed,
                                                          image_size=config.image_size, grayscale=config.grayscale)
        except ImgclfError as error:  # the first image may have gone missing since training
            log.warning(f"augmentation picture skipped: {error}")
    evaluation = None
    if (run.model_dir / "model.json").is_file():
        classifier = Classifier.load(run.path, allow_int8=False)
        try:
            items, split = evaluation_items(run.path, None, None)
        except ImgclfError as error:  # e.g. a run with only a training split
            log.warning(f"no held-out evaluation: {error}")
        else:
            evaluation = evaluate(classifier, items, split, run.path / "evaluation", label_issues=label_issues,
                                  known=known)
        write_model_card(run.model_dir, evaluation)
    return write_report(run.path, evaluation, pictures, run.path / "report.html"), evaluation
