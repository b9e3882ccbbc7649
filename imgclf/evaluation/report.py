"""``report.html``: one self-contained page about a run, readable offline and shareable as a file.

Built from :mod:`imgclf.evaluation.pages`. Sections: what was chosen and why, summary, configuration (folded), data, an update's gate,
training curves, metrics (overall and per class), a binary model's decision threshold, confusion matrix, for
path labels the scores and confusion matrix of every level, ROC,
reliability (before and after temperature scaling), samples, augmented examples, worst mistakes and, when computed,
likely label errors. A multi-label run has its own metric sections instead (per-label table, PR curves of
the lowest-AP labels, label co-occurrence: :mod:`imgclf.evaluation.multilabel`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import yaml

from imgclf.evaluation.evaluate import Evaluation
from imgclf.evaluation.gate_section import gate_section
from imgclf.evaluation.multilabel import report_sections, summary_card
from imgclf.evaluation.pages import image, page, percent, section, table
from imgclf.files import write_text_atomic
from imgclf.runs import RunDirectory


def write_report(run_dir: Path, evaluation: Evaluation | None, pictures: dict[str, Path], path: Path) -> Path:
    """Write ``report.html`` for the run at ``run_dir``; ``pictures`` adds curves, samples and augmentations."""
    model_json = run_dir / "model" / "model.json"
    bundle = yaml.safe_load(model_json.read_text()) if model_json.is_file() else {}
    bundle_metrics = bundle.get("metrics", {})
    config_file = run_dir / "config.yaml"  # an ensemble has none: its members' configs are in their bundles
    config = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}) if config_file.is_file() else {
        "model": bundle.get("architecture", ""), "data": str(run_dir.name),
        "members": [f"{member['name']} (weight {member['weight']:.3f})" for member in bundle.get("members", [])]}
    sections = [
        ("chosen", "What was chosen and why", _chosen(config, RunDirectory(run_dir).read_choices())),
        ("summary", "Summary", _summary(config, bundle_metrics, evaluation)),
        ("configuration", "Configuration", f"<details><summary>All {len(config)} options</summary>"
         + table(["option", "value"], [[k, _readable(v)] for k, v in config.items()]) + "</details>"),
        ("data", "Data", _data(RunDirectory(run_dir))),
        *filter(None, [gate_section(run_dir)]),
        ("curves", "Training curves", image(pictures.get("curves"), "training curves")
         + '<p class="muted">The shaded band is the gap between training and validation: a widening gap is '
           "overfitting.</p>"),
    ]
    multilabel = evaluation is not None and bool(evaluation.metrics.get("multilabel"))
    if evaluation is not None and multilabel:
        sections += report_sections(evaluation.metrics, evaluation.pictures)
    elif evaluation is not None:
        sections += [
            ("metrics", f"Metrics on the {evaluation.split} split", _metrics(evaluation.metrics)),
        ]
        if "decision" in evaluation.metrics:
            sections.append(("decision", "Decision threshold", _decision(evaluation.metrics["decision"],
                                                                          evaluation.split)))
        sections += [
            ("confusion", "Confusion matrix", image(evaluation.pictures.get("confusion_matrix"), "confusion matrix")
             + _confusions(evaluation.metrics)),
        ]
        if evaluation.metrics.get("levels"):
            sections.append(("levels", "Categories by level", _levels(evaluation)))
        sections += [
            ("roc", "ROC curves", image(evaluation.pictures.get("roc"), "ROC curves")),
            ("reliability", "Reliability", _reliability(evaluation)),
        ]
    sections += [
        ("samples", "Samples", image(pictures.get("samples"), "sample images")),
        ("augmentation", "Augmented examples", image(pictures.get("augmentation"), "augmented examples")),
    ]
    if evaluation is not None:
        mistakes = evaluation.pictures.get("worst_mistakes")
        sections.append(("mistakes", "Worst mistakes", image(mistakes, "worst mistakes") if mistakes
                         else "<p>No image of this split was misclassified.</p>"))
        if evaluation.metrics.get("label_issues") is not None:
            sections.append(("label-issues", "Likely label errors", _issues(evaluation)))
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    body = "".join(section(anchor, title, content) for anchor, title, content in sections)
    title = f"imgclf report: {config.get('model', '')} on {Path(str(config.get('data', ''))).name}"
    return write_text_atomic(path, page(title, f"<h1>{html.escape(title)}</h1>"
                                         f'<p class="muted">run: {html.escape(str(run_dir))}</p><nav>{nav}</nav>{body}'))


def _readable(value: Any) -> str:
    """A config value as a person writes it: 0.2652, not 0.26516504294495535; none, not YAML's "null ..."."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_readable(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_readable(item)}" for key, item in value.items()) + "}"
    return str(value)


# what a reader asks first about a run, in this order; the rest stays folded under Configuration
CHOICES = ("model", "pretrained", "strategy", "tail_blocks", "image_size", "epochs", "time_budget", "batch_size",
           "optimizer", "lr", "augment", "tta", "precision")


def _chosen(config: dict[str, Any], user_options: dict[str, Any] | None) -> str:
    """The run's main choices, each marked as the user's or imgclf's, before the 60-row configuration."""
    if user_options is None:  # an ensemble, or a run from before choices.json
        rows = [[name, _readable(config[name])] for name in CHOICES if name in config]
        return table(["choice", "value"], rows) if rows else '<p class="muted">(an ensemble: see its members)</p>'
    given = {name: value for name, value in user_options.items() if name not in ("data", "out")}
    rows = [[name, _readable(config[name]), "you" if name in given else "imgclf"] for name in CHOICES
            if name in config and (name in given or config[name] is not None)]
    set_by_you = ", ".join(f"{name} = {_readable(value)}" for name, value in given.items()) or "nothing"
    return (f"<p>Options you set: <b>{html.escape(set_by_you)}</b>. imgclf chose the rest from the data: the photo "
            "planner picks the pretrained model, image size and views that fit the time budget (its line is in the "
            "training log), and the model family's recipe sizes the schedule to the number of training images."
            "</p>" + table(["choice", "value", "set by"], rows))


def _summary(config: dict[str, Any], bundle_metrics: dict[str, Any], evaluation: Evaluation | None) -> str:
    cards = [("model", config.get("model")), ("strategy", config.get("strategy")),
             ("epochs", bundle_metrics.get("epochs_trained")),
             ("training time", f"{bundle_metrics.get('train_seconds', 0):.0f} s")]
    for split in ("val", "test"):
        if f"{split}_accuracy" in bundle_metrics:
            cards.append((f"{split} accuracy", percent(bundle_metrics[f"{split}_accuracy"])))
    if evaluation is not None and evaluation.metrics.get("multilabel"):
        cards.append(summary_card(evaluation.metrics))
    elif evaluation is not None:
        cards.append((f"macro F1 ({evaluation.split})", f"{evaluation.metrics['macro_avg']['f1']:.3f}"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><span class="muted">{html.escape(name)}</span><b>{html.escape(str(value))}</b></div>'
        for name, value in cards) + "</div>"


def _data(run: RunDirectory) -> str:
    if not run.has_split():
        return '<p class="muted">(no split.csv in this run)</p>'
    dataset = run.read_split()
    counts = dataset.class_counts()
    splits = dataset.splits
    rows = [[name, *(counts[name].get(split, 0) for split in splits)] for name in sorted(counts)]
    rows.append(["total", *(sum(counts[name].get(split, 0) for name in counts) for split in splits)])
    return table(["class", *splits], rows)


def _metrics(metrics: dict[str, Any]) -> str:
    overall = [["images", metrics["images"]], ["accuracy", percent(metrics["accuracy"])]]
    overall += [[name.replace("_", " "), percent(metrics[name])] for name in sorted(metrics)
                if name.startswith("top_")]
    overall += [["macro F1", metrics["macro_avg"]["f1"]], ["weighted F1", metrics["weighted_avg"]["f1"]],
                ["ROC-AUC (one vs rest)", metrics.get("roc_auc_ovr")], ["log loss", metrics["log_loss"]],
                ["expected calibration error", metrics["expected_calibration_error"]]]
    per_class = [[name, row["precision"], row["recall"], row["f1"], row["support"]]
                 for name, row in metrics["per_class"].items()]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        per_class.append([label, metrics[key]["precision"], metrics[key]["recall"], metrics[key]["f1"],
                          metrics["images"]])
    return table(["metric", "value"], overall) + table(["class", "precision", "recall", "F1", "support"], per_class)


def _decision(decision: dict[str, Any], split: str) -> str:
    """Where the binary model says yes: its threshold's figures and counts on ``split``, and the alternatives."""
    positive, negative = decision["positive"], decision["negative"]
    intro = (f"<p>The model says <b>{html.escape(positive)}</b> when P({html.escape(positive)}) is at least "
             f"<b>{decision['threshold']:.4g}</b> (chosen on the validation split for "
             f"{html.escape(decision['goal'])}). On the {html.escape(split)} split that gives precision "
             f"{decision['precision']:.3f}, recall {decision['recall']:.3f}, F1 {decision['f1']:.3f} and a false "
             f"positive rate of {decision['false_positive_rate']:.3f}; the curves under ROC mark the point.</p>")
    counts = table(["true (rows) / predicted (columns)", positive, negative],
                   [[positive, decision["true_positives"], decision["false_negatives"]],
                    [negative, decision["false_positives"], decision["true_negatives"]]])
    rows = [[row["goal"] + ("" if row["met"] else " (not reached)"), row["threshold"], row["precision"],
             row["recall"], row["f1"], row["false_positive_rate"]] for row in decision["alternatives"]]
    return (intro + "<h3>Confusion matrix at the threshold</h3>" + counts
            + f"<h3>Other thresholds, chosen on the {html.escape(split)} split itself</h3>"
            + table(["goal", "threshold", "precision", "recall", "F1", "false positive rate"], rows)
            + '<p class="muted">Choose one at training time with --threshold-for (e.g. recall=0.95); a threshold '
              "read off the split it is measured on flatters it.</p>")


def _levels(evaluation: Evaluation) -> str:
    """Accuracy and macro F1 per depth of the category tree, and each upper level's confusion matrix."""
    levels = evaluation.metrics["levels"]
    rows = [[level["depth"], len(level["classes"]), level["images"], percent(level["accuracy"]), level["macro_f1"]]
            for level in levels]
    pictures = "".join(image(evaluation.pictures.get(f"confusion_level{level['depth']}"),
                             f"confusion matrix, level {level['depth']}") for level in levels[:-1])
    return (table(["level", "categories", "images", "accuracy", "macro F1"], rows)
            + '<p class="muted">A category\'s probability is the sum of its sub-categories\'; each level is scored '
              "by its own most probable category, so a mistake between two sub-categories of one parent still counts "
              "as right one level up. The deepest level is the confusion matrix above.</p>" + pictures)


def _reliability(evaluation: Evaluation) -> str:
    """The reliability diagram; for a calibrated model, before and after temperature scaling side by side."""
    after = image(evaluation.pictures.get("reliability"), "reliability diagram")
    note = '<p class="muted">Bars on the diagonal mean the predicted probabilities can be taken at their word.</p>'
    before = evaluation.metrics.get("uncalibrated")
    if before is None:
        return after + note
    figures = table(["", "before", f"after (T = {before['temperature']:.3f})"],
                     [["expected calibration error", before["expected_calibration_error"],
                       evaluation.metrics["expected_calibration_error"]],
                      ["log loss", before["log_loss"], evaluation.metrics["log_loss"]]])
    pictures = (f'<div class="cards">{image(evaluation.pictures.get("reliability_uncalibrated"), "before")}'
                f"{after}</div>")
    return (figures + pictures + note + '<p class="muted">Temperature scaling (fitted on the validation split) '
            "divides every logit by T: it changes the probabilities, never the predicted class.</p>")


def _confusions(metrics: dict[str, Any]) -> str:
    pairs = metrics.get("most_confused") or []
    if not pairs:
        return ""
    return "<h3>Most confused pairs</h3>" + table(["true", "predicted as", "images"],
                                                    [[p["true"], p["predicted"], p["count"]] for p in pairs])


def _issues(evaluation: Evaluation) -> str:
    issues = evaluation.label_issues
    if not issues:
        return "<p>No image's label is confidently contradicted by the model.</p>"
    rows = [[issue["path"], issue["given"], issue["predicted"], percent(issue["given_probability"]),
             percent(issue["predicted_probability"])] for issue in issues[:50]]
    return (image(evaluation.pictures.get("label_issues"), "likely label errors")
            + f"<p>{len(issues)} image(s) flagged; all in label_issues.csv.</p>"
            + table(["image", "given label", "model says", "p(given)", "p(model)"], rows))
