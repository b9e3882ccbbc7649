"""Out-of-fold probabilities: K models, each trained without one fold and predicting it.

Label issues are only evidence when the model did not see the label it
questions. For data that has no held-out split worth the name (or to check
every image, training ones included), each image is predicted by a model
trained on the other K-1 folds with the original run's recipe.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import make_config, with_split_seed
from imgclf.data.sources import Item, label_indices
from imgclf.deploy.classifier import Classifier
from imgclf.errors import ImgclfError
from imgclf.paths import absolute_path
from imgclf.training import train

log = logging.getLogger(__name__)


# what a fold's run must not inherit from the original run's config (corrections: the items it is given are the
# ones to question, already corrected when evaluate was given --corrections)
FOLD_OVERRIDES = ("data", "out", "val_fraction", "test_fraction", "group_by", "corrections", "rename")


@dataclass(frozen=True)
class CrossValidation:
    """``evaluate``'s source of out-of-fold probabilities: ``folds`` models retrained with the bundle's recipe."""

    folds: int

    def __call__(self, bundle_config: dict[str, Any], classes: list[str], items: list[Item], work_dir: Path
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
        return out_of_fold_probabilities(bundle_config, classes, items, self.folds, work_dir)


def out_of_fold_probabilities(bundle_config: dict[str, Any], classes: list[str], items: list[Item], folds: int,
                              work_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, label indices, probabilities) with every image predicted by the model that did not train on it."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ImgclfError(f"--folds must be at least 2, got {folds}")
    labels = label_indices(items, classes)
    smallest = np.bincount(labels, minlength=len(classes))
    smallest = smallest[smallest > 0].min()
    if smallest < folds:
        raise ImgclfError(f"--folds {folds} needs at least {folds} images of every class; the smallest has {smallest}")
    recipe = with_split_seed({name: value for name, value in bundle_config.items() if name not in FOLD_OVERRIDES})
    if recipe.get("epochs") is not None:
        recipe.pop("time_budget", None)  # the epochs the budget gave are the recipe now
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(recipe["split_seed"]))
    probabilities = np.zeros((len(items), len(classes)))
    paths = [str(item.path) for item in items]
    for fold, (train_rows, held_out) in enumerate(splitter.split(np.zeros(len(items)), labels), start=1):
        log.info(f"fold {fold}/{folds}: training on {len(train_rows)} images, predicting {len(held_out)}")
        manifest = work_dir / f"fold-{fold}.csv"
        _write_fold(manifest, items, train_rows, held_out)
        config = make_config(**recipe, data=str(manifest), out=str(work_dir / f"fold-{fold}"), test_fraction=0.0)
        run = train(config, overwrite=True)
        classifier = Classifier.load(run.run_dir)
        for row, prediction in zip(held_out, classifier.predict_files([items[i].path for i in held_out])):
            if prediction.error:
                raise ImgclfError(f"{prediction.path}: {prediction.error}; remove it (imgclf inspect lists broken files)")
            probabilities[row] = prediction.probabilities
    return paths, labels, probabilities


def _write_fold(path: Path, items: list[Item], train_rows: np.ndarray, held_out: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for rows, split in ((train_rows, "train"), (held_out, "test")):
            for row in rows:
                writer.writerow([absolute_path(items[row].path), items[row].label, split])
