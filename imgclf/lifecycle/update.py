"""``imgclf update RUN --add DATA --out RUN2``: a trained model taught new photos or classes, judged before it is kept.

The new run trains on RUN's images plus DATA's, with RUN's recipe:

- RUN's val and test images stay where they were; DATA's images are split
  by RUN's rule (its fractions and seed; no test split where RUN had none).
  An image RUN already had keeps its split and takes DATA's label: a
  correction.
- A pretrained run (a probe, or a tail on kept activations) starts from
  RUN's weights (:func:`imgclf.engines.torch_engine.model.warm_pretrained`):
  its head is fitted again, with RUN's regularisation, on the features of old
  and new images, and a tail trains :data:`UPDATE_TAIL_EPOCHS` more epochs
  from RUN's. The embeddings and activations of RUN's images are on disk
  already (:mod:`imgclf.embeddings.store`), so only the new images pass
  through the trunk.
- Other pretrained runs (fine-tuned) train again from the pretrained
  weights, as train trained them.
- A model trained from scratch starts from RUN's weights
  (:mod:`imgclf.engines.warm_start`) and trains on old and new images for
  ``--time-budget`` (default: RUN's own schedule), so the old classes are
  rehearsed while the new ones are learnt.

Calibration, thresholds and the decision are chosen again as train chooses
them. Then the regression gate (:mod:`.gate`) compares the new model with
RUN's on RUN's held-out images; a failed gate deletes the new run and
refuses unless ``force``. A kept run gets ``gate.json``, ``added_data.csv``,
``<bundle>/lineage.json`` and its report.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import CLASS_WEIGHTS, TrainConfig
from imgclf.data.hierarchy import cut_labels
from imgclf.data.sources import ImageDataset, load_source, write_manifest
from imgclf.data.splits import assign_splits
from imgclf.deploy.bundle import ENSEMBLE, MODEL_FILE, read_bundle_info, update_bundle_info
from imgclf.deploy.kept_outputs import kept_probabilities, probabilities_by_path
from imgclf.errors import ImgclfError
from imgclf.lifecycle.gate import DEFAULT_MAX_DROP, GateResult, class_scores, judge, refusal
from imgclf.lifecycle.lineage import write_lineage
from imgclf.lifecycle.manifest import write_added
from imgclf.paths import absolute_path
from imgclf.runs import MARKER, RunDirectory, held_out_split
from imgclf.training import TrainResult, train

log = logging.getLogger(__name__)

# A tail's update: the probe's refit on the run's tail, then these epochs of the tail from the run's weights
# (benchmarks/results/update.json, sunflowers: update_all against update_all_tail_1 and retrain_cold)
UPDATE_TAIL_EPOCHS = 4


@dataclass
class UpdateResult:
    """The new run, its gate verdict and lineage (``train`` is what the training returned)."""

    run_dir: Path
    model_dir: Path
    gate: GateResult
    lineage: dict[str, Any]
    train: TrainResult


def update(run: str | Path, add: str | Path, out: str | Path, *, time_budget: str | None = None,
           max_drop: float = DEFAULT_MAX_DROP, force: bool = False, corrections: str | None = None,
           rename: list[str] | None = None, class_weights: str | None = None) -> UpdateResult:
    """Train ``out`` from ``run`` plus the images of ``add``; keep it if the gate passes (or ``force``).

    ``class_weights`` replaces the run's (``auto``: inverse frequency). It is
    not the default because it trades: it lifts a new class with few photos
    and costs the old classes (benchmarks/results/update.json, sunflowers:
    update_50_balanced against update_50, update_all_balanced against update_all).

    ``corrections``/``rename`` apply to the old and new images together; the
    run's own corrections are already in its ``split.csv`` and are not applied twice.
    """
    old = trained_run(Path(run))
    config = old.read_config()
    previous = old.read_split()
    added = added_data(add, previous, config)
    combined, news = combine(previous, added), changed_items(previous, added)
    refit = bool(config.pretrained) and config.strategy in ("probe", "tail")
    warm = not config.pretrained or refit
    if refit and config.strategy == "tail":
        config = replace(config, epochs=1.0 + UPDATE_TAIL_EPOCHS)
    if warm and config.backend != "torch":
        raise ImgclfError(f"{old.path} is a {config.backend} model trained from scratch; update warm-starts torch "
                          "models only: retrain on the old and new images with imgclf train")
    how = ("from its weights on kept embeddings" if refit else "warm-started from its weights" if warm
           else "retrained from the pretrained weights")
    log.info(f"updating {old.path}: {len(news.items)} new or relabelled image(s), {how}")
    settings = replace(config, out=str(out), time_budget=time_budget or config.time_budget,
                       corrections=corrections, rename=list(rename or []),
                       class_weights=_class_weights(class_weights, config.class_weights))
    if Path(out).exists() and any(Path(out).iterdir()):
        raise ImgclfError(f"--out {out} already exists; give a new folder for the updated run")
    with tempfile.TemporaryDirectory(prefix="imgclf-update-") as folder:
        manifest = Path(folder) / f"{Path(out).name}.csv"
        write_manifest(combined, manifest)
        result = train(replace(settings, data=str(manifest)), warm_start=old.model_dir if warm else None)
    if result.model_dir is None:  # interrupted (Ctrl-C)
        raise ImgclfError(f"update interrupted before its gate; delete {result.run_dir} and run the update again")
    new = RunDirectory(result.run_dir)
    _adopt_data(new, old, time_budget)
    gate = _gate(old, new, result, max_drop)
    if not gate.passed and not force:
        if (new.path / MARKER).exists():
            shutil.rmtree(new.path)
        raise ImgclfError(refusal(gate, str(out)))
    gate.forced = not gate.passed
    if gate.forced:
        log.warning(f"gate failed for {', '.join(change.name for change in gate.failed)}; written anyway (--force)")
    gate.write(new.path)
    lineage = write_lineage(new.model_dir, old.model_dir, write_added(new, news), gate.to_dict())
    return UpdateResult(new.path, new.model_dir, gate, lineage, result)


def _class_weights(given: str | None, run: str) -> str:
    if given is None:
        return run
    if given not in CLASS_WEIGHTS:
        raise ImgclfError(f"--class-weights {given}: choose one of {', '.join(CLASS_WEIGHTS)} (auto: inverse "
                          "frequency, for a new class with far fewer photos than the old ones)")
    return given


def trained_run(path: Path) -> RunDirectory:
    """``path`` as a finished run an update can start from, or a one-line error saying what it is instead."""
    bundle = path / "model" / MODEL_FILE
    if not path.is_dir():
        what = "is a file, not a run" if path.exists() else "no such run"
        raise ImgclfError(f"{path}: {what}; give a run directory that imgclf train wrote (runs/NAME)")
    if bundle.is_file() and read_bundle_info(path / "model").kind == ENSEMBLE:
        raise ImgclfError(f"{path} is an ensemble; update each member run (imgclf update MEMBER --add DATA --out "
                          "NEW), then build a new ensemble from the updated runs with imgclf ensemble")
    run = RunDirectory(path)
    if not run.config_file.is_file() or not run.has_split():
        raise ImgclfError(f"{path} is not an imgclf run (no config.yaml or split.csv); give a run directory that "
                          "imgclf train wrote")
    if not bundle.is_file():
        raise ImgclfError(f"{path} has no finished model (no model/{MODEL_FILE}); finish it with "
                          f"imgclf train --resume {path} first")
    return run


def added_data(add: str | Path, previous: ImageDataset, config: TrainConfig) -> ImageDataset:
    """DATA's images, labels cut as RUN's, names checked against RUN's, split by RUN's rule."""
    added = load_source(add)
    if not added.items:
        raise ImgclfError(f"--add {add}: no images found; give a folder of class folders or a CSV with path,label")
    if added.multilabel and not previous.multilabel:
        raise ImgclfError(f"--add {add} is multi-label but the run is single-label; give one label per image")
    if config.label_depth:
        added = cut_labels(added, config.label_depth)
    check_class_names(added.classes, previous.classes, str(add))
    held = {split: bool(previous.split_items(split)) for split in ("val", "test")}
    return assign_splits(added, val_fraction=config.val_fraction if held["val"] else 0.0,
                         test_fraction=config.test_fraction if held["test"] else 0.0,
                         seed=config.split_seed, group_by=config.group_by)


def check_class_names(new: list[str], existing: list[str], source: str) -> None:
    """Refuse a new class named like an existing one but for case or spacing: almost always a typo."""
    by_shape = {_shape(name): name for name in existing}
    for name in new:
        twin = by_shape.get(_shape(name))
        if name not in existing and twin is not None:
            raise ImgclfError(f"--add {source}: class '{name}' differs from the existing class '{twin}' only by case "
                              f"or spacing; rename it to '{twin}' (or give it a clearly different name)")


def _shape(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


def combine(previous: ImageDataset, added: ImageDataset) -> ImageDataset:
    """RUN's items, relabelled where DATA names them again, plus DATA's new images; the union of the classes."""
    relabelled = {absolute_path(item.path): item for item in added.items}
    items = [replace(item, labels=relabelled.pop(absolute_path(item.path)).labels)
             if absolute_path(item.path) in relabelled else item for item in previous.items]
    items += list(relabelled.values())
    classes = sorted({label for item in items for label in item.labels})
    return ImageDataset(items=items, classes=classes, multilabel=previous.multilabel, source=previous.source)


def changed_items(previous: ImageDataset, added: ImageDataset) -> ImageDataset:
    """The images of ``added`` that change the data: new files, and old ones with other labels (corrections)."""
    known = {absolute_path(item.path): set(item.labels) for item in previous.items}
    return added.with_items([item for item in added.items if known.get(absolute_path(item.path)) != set(item.labels)])


def _adopt_data(new: RunDirectory, old: RunDirectory, time_budget: str | None) -> None:
    """The new run's data is its own split.csv (the temporary manifest it read is gone); its choices are RUN's."""
    config = replace(new.read_config(), data=str(new.split_file))
    new.write_config(config)
    update_bundle_info(new.model_dir, config=config.to_dict())
    choices = old.read_choices() or {}
    new.write_choices({**choices, **({"time_budget": time_budget} if time_budget else {})})


def _gate(old: RunDirectory, new: RunDirectory, result: TrainResult, max_drop: float) -> GateResult:
    """Both models on RUN's held-out images (labels as the new run has them), and the new classes' scores."""
    from imgclf.deploy.classifier import Classifier

    split = held_out_split(old.read_split()) or "test"
    old_paths = {absolute_path(item.path) for item in old.read_split().split_items(split)}
    dataset = new.read_split()
    judged = [item for item in dataset.items if absolute_path(item.path) in old_paths]
    if not judged:
        log.warning(f"{old.path} has no val or test images: the gate has nothing to judge the update on")
    # both at full precision: an int8 export of the old model would skew a 2-point gate
    before, after = (Classifier.load(path, allow_int8=False) for path in (old.path, new.path))
    known = result.held_out_probabilities
    paths = [item.path for item in judged]
    rows_before = probabilities_by_path(before, paths, kept_probabilities(old.path, before))
    rows_after = probabilities_by_path(after, paths, known)
    kept = [index for index, item in enumerate(judged)
            if absolute_path(item.path) in rows_before and absolute_path(item.path) in rows_after]
    labels = [judged[index].labels for index in kept]
    gate = judge(_scores(before, labels, [rows_before[absolute_path(judged[i].path)] for i in kept]),
                 _scores(after, labels, [rows_after[absolute_path(judged[i].path)] for i in kept]),
                 multilabel=dataset.multilabel, split=split, max_drop=max_drop)
    fresh = [name for name in dataset.classes if name not in before.classes]
    held = dataset.split_items(held_out_split(dataset) or split)
    if fresh and held:
        rows = probabilities_by_path(after, [item.path for item in held], known)
        items = [item for item in held if absolute_path(item.path) in rows]
        scores = _scores(after, [item.labels for item in items], [rows[absolute_path(item.path)] for item in items])
        gate.new_classes = {name: scores[name] for name in fresh}
    return gate


def _scores(classifier: Any, labels: list[tuple[str, ...]], rows: list[np.ndarray]) -> dict[str, Any]:
    probabilities = np.stack(rows) if rows else np.zeros((0, len(classifier.classes)))
    predicted = None if classifier.info.multilabel else classifier.decide(probabilities)
    return class_scores(labels, probabilities, predicted, classifier.classes, classifier.info.multilabel)
