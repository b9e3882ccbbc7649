"""``evaluate``: a bundle's predictions on labelled images, turned into metrics, pictures and label issues.

It needs only the bundle and the images: the data can be any source, or by
default the test split the run saved in its ``split.csv`` (validation when
there is no test split). Broken images are skipped and counted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgclf.console import progress_bar
from imgclf.data.corrections import correct_dataset
from imgclf.data.decode import decode_file
from imgclf.data.hierarchy import cut_items
from imgclf.data.sources import ImageDataset, Item, label_indices, load_source
from imgclf.deploy.bundle import find_bundle
from imgclf.deploy.calibration import uncalibrated
from imgclf.deploy.explain import overlay
from imgclf.errors import ImgclfError
from imgclf.evaluation.binary import binary_decision_metrics
from imgclf.evaluation.label_issues import find_label_issues
from imgclf.evaluation.levels import level_metrics, plot_level_confusions
from imgclf.evaluation.metrics import compute_log_loss, compute_metrics, expected_calibration_error
from imgclf.evaluation.multilabel import (
    draw_mistakes,
    find_multilabel_issues,
    multilabel_metrics,
    plot_cooccurrence,
    plot_lowest_ap_curves,
    truth_matrix,
    worst_mistakes,
)
from imgclf.evaluation.plots import plot_confusion_matrix, plot_reliability, plot_roc
from imgclf.files import write_problem_list, write_text_atomic
from imgclf.pictures import save_image_grid
from imgclf.runs import RunDirectory, held_out_split

log = logging.getLogger(__name__)


GALLERY_SIZE = 12
THUMBNAIL = 128


@dataclass
class Evaluation:
    """What ``evaluate`` measured and where it wrote it."""

    out: Path
    split: str
    metrics: dict[str, Any]
    pictures: dict[str, Path] = field(default_factory=dict)
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def evaluation_items(model: str | Path, data: str | Path | None, split: str | None) -> tuple[list[Item], str]:
    """The labelled images to evaluate on, and the name of the split they come from."""
    return choose_split(evaluation_dataset(model, data), split)


def evaluation_dataset(model: str | Path, data: str | Path | None, corrections: str | Path | None = None,
                       rename: Iterable[str] = ()) -> ImageDataset:
    """``data`` (by default the run's own ``split.csv``) with ``corrections`` and ``rename`` applied."""
    if data is None:
        run = RunDirectory(find_bundle(model).parent)
        if not run.has_split():
            raise ImgclfError(f"{model} is a bundle without its run's split.csv; give the images to evaluate on "
                              "(imgclf evaluate MODEL DATA)")
        dataset = run.read_split()
    else:
        dataset = load_source(data)
    return correct_dataset(dataset, corrections, rename)


def choose_split(dataset: ImageDataset, split: str | None) -> tuple[list[Item], str]:
    if split == "all":
        return dataset.items, "all"
    if split is not None:
        items = dataset.split_items(split)
        if not items:
            has = (f"only the splits {', '.join(dataset.splits)}" if dataset.splits
                   else "only unsplit images (no train/val/test folders or split column)")
            choices = " or ".join(f"--split {name}" for name in [*dataset.splits, "all"])
            raise ImgclfError(f"--split {split}: {dataset.source} has no images in that split; it has {has}; "
                              f"use {choices}")
        return items, split
    held_out = held_out_split(dataset)
    if held_out is not None:
        return dataset.split_items(held_out), held_out
    if dataset.split_items("train"):
        raise ImgclfError(f"{dataset.source} holds only training images; evaluating on them would flatter the "
                          "model. Give held-out images, or --split train if you mean it")
    return dataset.items, "all"


class OutOfFold(Protocol):
    """Probabilities of each image from a model that did not train on it (``workflows.cross_validation``).

    A protocol rather than an import: cross-validation trains models, and
    training sits below evaluation, so evaluation is handed the workflow.
    """

    @property
    def folds(self) -> int: ...

    def __call__(self, bundle_config: dict[str, Any], classes: list[str], items: list[Item], work_dir: Path
                 ) -> tuple[list[str], np.ndarray, np.ndarray]: ...


def evaluate(classifier: Any, items: list[Item], split: str, out: Path, *, label_issues: bool = False,
             out_of_fold: OutOfFold | None = None, batch_size: int = 64,
             known: Mapping[str, np.ndarray] | None = None) -> Evaluation:
    """Predict ``items`` with ``classifier`` and write metrics.json, pictures and (optionally) label issues.

    Label issues come from the bundle's own predictions, or with
    ``out_of_fold`` from out-of-fold predictions of models retrained with its recipe.
    ``known`` maps paths to the probabilities this classifier already gave
    them (a training run's pass over its held-out split): those images are
    not decoded and passed through the model again.
    """
    folds = out_of_fold.folds if out_of_fold is not None else None
    items = _labels_as_trained(classifier, items)
    if classifier.info.multilabel:
        if folds:
            raise ImgclfError("--folds: cross-validated label issues are for single-label models; use --label-issues "
                              "alone for a multi-label model (issues from its own predictions)")
        return _evaluate_multilabel(classifier, items, split, out, label_issues, batch_size, known)
    out.mkdir(parents=True, exist_ok=True)
    paths, labelled, probabilities, skipped = _predict(classifier, items, batch_size, known)
    labels = label_indices(labelled, classifier.classes)
    predicted = classifier.decide(probabilities)  # the labels predict and serve give: a binary model's threshold
    metrics = _decision_metrics(classifier, labels, probabilities, predicted)
    metrics.update(split=split, tta=classifier.tta, skipped=len(skipped))
    pictures = _plot_metrics(classifier, labels, probabilities, metrics, split, out)
    levels = level_metrics(labels, probabilities, classifier.classes)
    if levels:
        metrics["levels"] = levels
        pictures.update(plot_level_confusions(levels, out))
    _add_uncalibrated(classifier, labels, probabilities, out, metrics, pictures)
    mistakes = _worst_mistakes(paths, labels, predicted, probabilities, classifier.classes)
    _write_issues(mistakes, out / "worst_mistakes.csv")  # the review page's "worst mistakes"
    if mistakes:
        pictures["worst_mistakes"] = _gallery(mistakes, classifier.classes, out / "worst_mistakes.png",
                                              "highest-loss mistakes (heat: Grad-CAM of the predicted class)",
                                              explainer=classifier)
    issues: list[dict[str, Any]] = []
    if label_issues or folds:
        issues = _label_issues(classifier, items, (paths, labels, probabilities), out_of_fold, out, pictures)
    metrics["label_issues"] = len(issues) if label_issues or folds else None
    metrics["label_issues_from"] = f"{folds}-fold cross-validation" if folds else "the model's own predictions"
    return _finish(metrics, out, split, pictures, issues, skipped)


def _labels_as_trained(classifier: Any, items: list[Item]) -> list[Item]:
    """``items`` with their labels cut to the depth the model trained on; a label it does not know is an error."""
    depth = classifier.info.config.get("label_depth")
    if depth and not classifier.info.multilabel:  # trained on cut paths: the images' full paths are cut the same way
        items = cut_items(items, depth)
    unknown = sorted({label for item in items for label in item.labels} - set(classifier.classes))
    if unknown:
        raise ImgclfError(f"labels the model does not know: {', '.join(unknown[:5])}; it was trained on "
                          f"{', '.join(classifier.classes[:10])}{', ...' if len(classifier.classes) > 10 else ''}")
    return items


def _decision_metrics(classifier: Any, labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray
                      ) -> dict[str, Any]:
    """The metrics of the labels the classifier decides, and a binary model's figures at its threshold."""
    decision = classifier.decision
    metrics = compute_metrics(labels, probabilities, classifier.classes, predicted=predicted,
                              positive=decision[0] if decision else 1)
    if decision is not None:
        positive, threshold = decision
        metrics["decision"] = binary_decision_metrics(labels, probabilities, classifier.classes, positive, threshold,
                                                      goal=classifier.info.threshold_goal)
    return metrics


def _plot_metrics(classifier: Any, labels: np.ndarray, probabilities: np.ndarray, metrics: dict[str, Any],
                  split: str, out: Path) -> dict[str, Path]:
    """The confusion matrix, the ROC curve and the reliability diagram, drawn into ``out``."""
    return {
        "confusion_matrix": plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classifier.classes,
                                                  out / "confusion_matrix.png"),
        "roc": plot_roc(labels, probabilities, classifier.classes, out / "roc.png", metrics.get("decision"), split),
        "reliability": plot_reliability(labels, probabilities, out / "reliability.png",
                                        metrics["expected_calibration_error"]),
    }


def _add_uncalibrated(classifier: Any, labels: np.ndarray, probabilities: np.ndarray, out: Path,
                      metrics: dict[str, Any], pictures: dict[str, Path]) -> None:
    """For a temperature-scaled model, the calibration figures and diagram of the same images before the scaling."""
    temperature = classifier.info.temperature
    if temperature == 1.0 or classifier.info.multilabel:
        return
    raw = uncalibrated(probabilities, temperature)
    raw_ece = expected_calibration_error(labels, raw)
    metrics["uncalibrated"] = {"temperature": temperature, "expected_calibration_error": raw_ece,
                               "log_loss": compute_log_loss(labels, raw, len(classifier.classes))}
    pictures["reliability_uncalibrated"] = plot_reliability(labels, raw, out / "reliability_uncalibrated.png",
                                                            raw_ece, title="before temperature scaling")


def _label_issues(classifier: Any, items: list[Item], predictions: tuple[list[str], np.ndarray, np.ndarray],
                  out_of_fold: OutOfFold | None, out: Path, pictures: dict[str, Path]) -> list[dict[str, Any]]:
    """Likely label errors, from the model's own (paths, labels, probabilities) or, with ``out_of_fold``, from
    models that did not train on the images; written to ``label_issues.csv``, and drawn into ``pictures`` when any."""
    paths, labels, probabilities = predictions
    if out_of_fold is not None:
        decoded = set(paths)
        good = [item for item in items if str(item.path) in decoded]
        paths, labels, probabilities = out_of_fold(classifier.info.config, classifier.classes, good, out / "folds")
    issues = find_label_issues(paths, labels, probabilities, classifier.classes)
    _write_issues(issues, out / "label_issues.csv")
    if issues:
        pictures["label_issues"] = _gallery(issues[:GALLERY_SIZE], classifier.classes, out / "label_issues.png",
                                            "likely label errors (heat: Grad-CAM of the model's class)",
                                            explainer=classifier)
    return issues


def _evaluate_multilabel(classifier: Any, items: list[Item], split: str, out: Path, label_issues: bool,
                         batch_size: int, known: Mapping[str, np.ndarray] | None) -> Evaluation:
    """The multi-label evaluation: per-label and averaged figures at the bundle's thresholds, PR curves,
    co-occurrence, missed and spurious labels, and (with ``label_issues``) per-label confident learning."""
    out.mkdir(parents=True, exist_ok=True)
    paths, labelled, probabilities, skipped = _predict(classifier, items, batch_size, known)
    truth = truth_matrix(labelled, classifier.classes)
    thresholds = classifier.label_thresholds()
    said = classifier.label_decisions(probabilities)
    metrics = multilabel_metrics(truth, probabilities, classifier.classes, thresholds)
    metrics.update(split=split, tta=classifier.tta, skipped=len(skipped),
                   threshold_goal=classifier.info.threshold_goal or "0.5 (no thresholds in the bundle)")
    pictures = {"pr_curves": plot_lowest_ap_curves(truth, probabilities, classifier.classes, thresholds,
                                                   out / "pr_curves.png"),
                "cooccurrence": plot_cooccurrence(truth, said, classifier.classes, out / "cooccurrence.png")}
    mistakes = worst_mistakes(paths, truth, probabilities, said, classifier.classes)
    metrics["worst_mistakes"] = mistakes
    if mistakes:
        pictures["worst_mistakes"] = draw_mistakes(mistakes, out / "worst_mistakes.png")
    issues: list[dict[str, Any]] = []
    if label_issues:
        issues = find_multilabel_issues(paths, truth, probabilities, classifier.classes)
        _write_issues(issues, out / "label_issues.csv")
        if issues:
            pictures["label_issues"] = _gallery(issues[:GALLERY_SIZE], classifier.classes, out / "label_issues.png",
                                                "likely label errors, one label each")
    metrics["label_issues"] = len(issues) if label_issues else None
    metrics["label_issues_from"] = "the model's own predictions, per label"
    return _finish(metrics, out, split, pictures, issues, skipped)


def _finish(metrics: dict[str, Any], out: Path, split: str, pictures: dict[str, Path], issues: list[dict[str, Any]],
            skipped: list[tuple[str, str]]) -> Evaluation:
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    if skipped:
        write_problem_list(out / "skipped.txt", skipped)
        log.warning(f"skipped {len(skipped)} unreadable image(s); listed in {out / 'skipped.txt'}")
    return Evaluation(out=out, split=split, metrics=metrics, pictures=pictures, label_issues=issues, skipped=skipped)


def _predict(classifier: Any, items: list[Item], batch_size: int, known: Mapping[str, np.ndarray] | None
             ) -> tuple[list[str], list[Item], np.ndarray, list[tuple[str, str]]]:
    """Decodable images' paths, items and probabilities (``known`` ones as given), and the skipped ones.

    None decodable is an error.
    """
    known = known or {}
    fresh = [item for item in items if str(item.path) not in known]
    results: dict[str, np.ndarray | str] = {}
    with progress_bar() as bar:
        task = bar.add_task("Evaluating", total=len(items))
        bar.advance(task, len(items) - len(fresh))
        for row in classifier.predict_files([item.path for item in fresh], batch_size=batch_size):
            bar.advance(task)
            results[row.path] = row.error if row.error else row.probabilities
    paths, labelled, rows, skipped = [], [], [], []
    for item in items:  # in the items' order, known or not
        path = str(item.path)
        result = known[path] if path in known else results[path]
        if isinstance(result, str):
            skipped.append((path, result))
            continue
        paths.append(path)
        labelled.append(item)
        rows.append(result)
    if not rows:
        raise ImgclfError("none of the images could be decoded; run imgclf inspect on the data")
    return paths, labelled, np.stack(rows), skipped


def _worst_mistakes(paths: list[str], labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                    classes: list[str]) -> list[dict[str, Any]]:
    """Misclassified images with the highest loss (lowest probability on the true class) first."""
    wrong = np.flatnonzero(predicted != labels)
    true_probability = probabilities[wrong, labels[wrong]]
    order = wrong[np.argsort(true_probability, kind="stable")][:GALLERY_SIZE]
    return [{"path": paths[i], "given": classes[labels[i]], "predicted": classes[predicted[i]],
             "given_probability": float(probabilities[i, labels[i]]),
             "predicted_probability": float(probabilities[i, predicted[i]])} for i in order]


def _gallery(rows: list[dict[str, Any]], classes: list[str], path: Path, title: str, explainer: Any = None) -> Path:
    """Thumbnails with labels; with ``explainer`` (a Classifier) each overlaid with its predicted class's Grad-CAM."""
    images, titles = [], []
    for row in rows:
        decoded = decode_file(Path(row["path"]), (THUMBNAIL, THUMBNAIL), policy="pad")
        if decoded.pixels is None:
            continue
        if explainer is not None:
            try:
                explanation = explainer.explain(Path(row["path"]), top_k=1)
            except ImgclfError:  # a model Grad-CAM cannot explain: plain thumbnails
                explainer = None
            else:
                images.append(overlay(explanation.pixels, explanation.map))
                titles.append(_caption(row))
                continue
        images.append(decoded.pixels)
        titles.append(_caption(row))
    return save_image_grid(images, titles, path, columns=4, title=title)


def _caption(row: dict[str, Any]) -> str:
    return (f"{Path(row['path']).name}\ntrue {row['given']} {row['given_probability']:.0%}\n"
            f"predicted {row['predicted']} {row['predicted_probability']:.0%}")


def _write_issues(issues: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "given", "predicted", "given_probability",
                                                "predicted_probability", "evidence"], restval="")
    writer.writeheader()
    writer.writerows(issues)
    write_text_atomic(path, buffer.getvalue())
