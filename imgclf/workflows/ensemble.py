"""``imgclf ensemble``: soft voting over trained runs, weighted by what the validation split supports.

The ensemble is a folder that every command treats as one model::

    E/
      model/model.json          kind: ensemble, the classes, members (relative path, weight)
      model/members/<i>-<name>/ each member's bundle, copied whole (exports included)
      split.csv                 the first member's split: evaluate and report use its held-out images
      ensemble.json             weights, and validation / held-out scores of each member and the ensemble

Each member's probabilities on val and test are those its training kept
(:mod:`imgclf.deploy.kept_outputs`), so building an ensemble of fresh runs
predicts nothing; older runs' images are predicted. Weights
(:mod:`imgclf.workflows.ensemble_weights`) minimise the validation negative
log-likelihood of the weighted mean of the members' calibrated
probabilities over the simplex where that beats equal weights on val images
they were not fitted on (``weights="auto"``), or always (``"fit"``), or
never (``"equal"``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.sources import read_manifest
from imgclf.deploy.bundle import ENSEMBLE, MODEL_FILE, BundleInfo, bundle_json, find_bundle, read_bundle_info
from imgclf.deploy.classifier import Classifier, EnsembleClassifier
from imgclf.deploy.decision import choose_decision
from imgclf.deploy.kept_outputs import kept_probabilities, probabilities_by_path
from imgclf.errors import ImgclfError
from imgclf.evaluation.metrics import compute_log_loss
from imgclf.files import write_folder_atomic, write_text_atomic
from imgclf.paths import absolute_path
from imgclf.thresholds import parse_goal
from imgclf.workflows.ensemble_weights import WEIGHTINGS, choose_weights, explain

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    """Where the ensemble went, its weights, and each member's scores beside the ensemble's."""

    out: Path
    weights: dict[str, float]
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {split: {accuracy, log_loss}}
    images: dict[str, int] = field(default_factory=dict)  # split -> images scored
    # the ensemble's probabilities on val and the held-out split, by absolute path: its report reads them
    held_out_probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def build_ensemble(runs: Sequence[str | Path], out: str | Path, weights: str = "auto", overwrite: bool = False,
                   batch_size: int = 64, alongside: bool = False) -> EnsembleResult:
    """Copy the members into ``out``, weigh them on validation (``weights``: auto, fit or equal), score members and
    ensemble.

    ``alongside``: ``out`` is a run directory (``--ensemble``'s, holding the member runs) and keeps what it
    holds; the bundle and ``ensemble.json`` are written into it, each atomically.
    """
    if weights not in WEIGHTINGS:
        raise ImgclfError(f"--weights {weights} is not one of {', '.join(WEIGHTINGS)}")
    if len(runs) < 2:
        raise ImgclfError(f"an ensemble needs at least two runs, got {len(runs)}; imgclf ensemble RUN RUN... --out E")
    out = Path(out)
    if out.exists() and not overwrite and not alongside:
        raise ImgclfError(f"--out {out} exists; choose another folder or add --overwrite")
    bundles = [find_bundle(run) for run in runs]
    infos = [read_bundle_info(bundle) for bundle in bundles]
    _check_members(bundles, infos)
    names = ([Path(run).name for run in runs] if alongside else  # --ensemble's members are named with their index
             [f"{index}-{Path(run).resolve().name if Path(run).name != 'model' else Path(run).resolve().parent.name}"
              for index, run in enumerate(runs)])
    split_file = bundles[0].parent / "split.csv"
    if not split_file.is_file():
        raise ImgclfError(f"{runs[0]} has no split.csv; the first run must be a run directory (its validation split "
                          "fits the weights)")
    dataset = read_manifest(split_file)
    _check_splits(bundles, dataset, runs)
    held_out_name = "test" if dataset.split_items("test") else "val"
    members = [Classifier.load(bundle, batch_size=batch_size, allow_int8=False) for bundle in bundles]
    kept = [kept_probabilities(bundle.parent, member) for bundle, member in zip(bundles, members)]
    scored = {split: _split_probabilities(members, kept, dataset.split_items(split), infos[0].classes, split,
                                          split_file, batch_size)
              for split in sorted({"val", held_out_name})}
    labels, val_probabilities, _ = scored["val"]
    fitted, weighting = choose_weights(val_probabilities, labels, weights)
    log.info(f"member weights: {explain(weighting)}")
    info = _ensemble_info(infos, names, fitted, {"weights": weights, "members": [str(run) for run in runs]})
    ensemble = EnsembleClassifier(members, fitted, info)
    positive = infos[0].positive
    if positive and infos[0].thresholds:  # binary: the vote gets its own threshold on val, for the first member's goal
        goal = parse_goal(infos[0].threshold_goal or "f1")
        choice = choose_decision(ensemble.combine(val_probabilities), labels, info.classes, positive, goal)
        info.positive, info.thresholds, info.threshold_goal = positive, {positive: choice.threshold}, str(goal)
    scores = _scores(names, ensemble, scored)
    info.metrics = {f"{split}_{metric}": value for split, values in scores["ensemble"].items()
                    for metric, value in values.items()}
    summary = {"weights": dict(zip(names, info_weights(info))), **weighting, "scores": scores,
               "held_out": held_out_name}
    if alongside:
        _write_alongside(out, info, bundles, names, summary)
    else:
        _write(out, info, bundles, names, split_file, summary)
    combined = {path: row for _, probabilities, paths in scored.values()
                for path, row in zip(paths, ensemble.combine(probabilities))}
    return EnsembleResult(out, dict(zip(names, info_weights(info))), scores,
                          images={split: len(labels_) for split, (labels_, _, _) in scored.items()},
                          held_out_probabilities=combined)


def _scores(names: list[str], ensemble: EnsembleClassifier,
            scored: dict[str, tuple[np.ndarray, list[np.ndarray], list[str]]]) -> dict[str, dict[str, Any]]:
    """Accuracy and log loss of each member and of the ensemble, on each scored split."""
    scores = {name: {split: _score(labels, probabilities[position]) for split, (labels, probabilities, _) in
                     scored.items()} for position, name in enumerate(names)}
    scores["ensemble"] = {split: _score(labels, ensemble.combine(probabilities))
                          for split, (labels, probabilities, _) in scored.items()}
    return scores


def _ensemble_info(infos: list[BundleInfo], names: list[str], fitted: np.ndarray, config: dict[str, Any]
                   ) -> BundleInfo:
    """The ensemble's model.json: the first member's classes and channels, each member with its weight."""
    return BundleInfo(architecture=ENSEMBLE, model_args={}, classes=infos[0].classes,
                      image_size=max(member.image_size for member in infos), mean=[0.0] * 3, std=[1.0] * 3,
                      channels=infos[0].channels, backend=ENSEMBLE, kind=ENSEMBLE, config=config,
                      members=[{"path": f"members/{name}", "name": name, "weight": round(float(weight), 6),
                                "architecture": member.architecture, "backend": member.backend,
                                "image_size": member.image_size}
                               for name, weight, member in zip(names, fitted, infos)])


def _split_probabilities(members: list[Classifier], kept: list[dict[str, np.ndarray]], items: list[Any],
                         classes: list[str], split: str, split_file: Path, batch_size: int
                         ) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """(class indices, each member's (N, C) probabilities, paths) of the split's images every member could read;
    kept outputs where a member has them, predictions for the rest."""
    if len(items) < 2:
        raise ImgclfError(f"{split_file} has {len(items)} {split} image(s); an ensemble fits its weights on val")
    paths = [absolute_path(item.path) for item in items]
    unknown = sum(any(path not in rows for path in paths) for rows in kept)
    log.info(f"{len(items):,} {split} images: {len(members) - unknown} member(s) kept their outputs from training, "
             f"{unknown} predict them")
    rows = [probabilities_by_path(member, paths, known, batch_size) for member, known in zip(members, kept)]
    ok = [path for path in paths if all(path in member_rows for member_rows in rows)]
    readable = set(ok)
    index = {name: position for position, name in enumerate(classes)}
    labels = np.array([index[item.label] for item, path in zip(items, paths) if path in readable])
    return labels, [np.stack([member_rows[path] for path in ok]) for member_rows in rows], ok


def info_weights(info: BundleInfo) -> list[float]:
    return [member["weight"] for member in info.members]


def _score(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {"accuracy": round(float((probabilities.argmax(axis=1) == labels).mean()), 6),
            "log_loss": round(compute_log_loss(labels, probabilities, probabilities.shape[1]), 6)}


def _check_members(bundles: list[Path], infos: list[BundleInfo]) -> None:
    first = infos[0]
    for bundle, info in zip(bundles[1:], infos[1:]):
        if info.kind == ENSEMBLE or first.kind == ENSEMBLE:
            raise ImgclfError(f"{bundle} is an ensemble; list its member runs instead of nesting ensembles")
        if info.classes != first.classes:
            missing = sorted(set(first.classes) ^ set(info.classes))
            raise ImgclfError(f"{bundle} has other classes than {bundles[0]} "
                              f"({', '.join(missing[:5]) or 'another order'}); ensemble runs trained on the same classes")
        if info.multilabel or info.channels != first.channels:
            raise ImgclfError(f"{bundle}: ensembles combine single-label models with the same channels")


def _check_splits(bundles: list[Path], dataset: Any, runs: Sequence[str | Path]) -> None:
    """No member may have trained on the images the weights are fitted and scored on."""
    held_out = {str(item.path) for item in dataset.items if item.split != "train"}
    for bundle, run in zip(bundles[1:], runs[1:]):
        manifest = bundle.parent / "split.csv"
        if manifest.is_file():
            trained = {str(item.path) for item in read_manifest(manifest).split_items("train")}
            if trained & held_out:
                raise ImgclfError(f"{run} trained on {len(trained & held_out)} of {runs[0]}'s validation/test images; "
                                  "train every member on the same split (same data and --split-seed)")


def _write(out: Path, info: BundleInfo, bundles: list[Path], names: list[str], split_file: Path,
           summary: dict[str, Any]) -> None:
    def fill(folder: Path) -> None:
        _fill_bundle(folder / "model", info, bundles, names)
        shutil.copy2(split_file, folder / "split.csv")
        write_text_atomic(folder / "ensemble.json", json.dumps(summary, indent=2))

    write_folder_atomic(out, fill)


def _write_alongside(out: Path, info: BundleInfo, bundles: list[Path], names: list[str],
                     summary: dict[str, Any]) -> None:
    write_folder_atomic(out / "model", lambda model: _fill_bundle(model, info, bundles, names))
    write_text_atomic(out / "ensemble.json", json.dumps(summary, indent=2))


def _fill_bundle(model: Path, info: BundleInfo, bundles: list[Path], names: list[str]) -> None:
    for bundle, name in zip(bundles, names):
        shutil.copytree(bundle, model / "members" / name)
    (model / MODEL_FILE).write_text(bundle_json(info), encoding="utf-8")
