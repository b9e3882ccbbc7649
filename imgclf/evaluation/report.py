"""``report.html``: one self-contained page about a run, readable offline and shareable as a file.

Pictures are embedded as base64 PNGs and the style is inline, so the page
needs no network and no other file. Sections: summary, configuration, data,
training curves, metrics (overall and per class), confusion matrix, ROC,
reliability (before and after temperature scaling), samples, augmented examples, worst mistakes and, when computed,
likely label errors.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import yaml

from imgclf.data.sources import read_manifest
from imgclf.evaluation.evaluate import Evaluation
from imgclf.files import write_text_atomic

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #1d2330; background: #fff; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #e3e7ef; padding-bottom: 0.3rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #d9dee8; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f9; }
img { max-width: 100%; height: auto; border: 1px solid #e3e7ef; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { background: #f3f5f9; border-radius: 8px; padding: 0.7rem 1.1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.5rem; }
.muted { color: #66708a; }
nav a { margin-right: 0.8rem; }
"""


def _image(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "n/a"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


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
        ("summary", "Summary", _summary(config, bundle_metrics, evaluation)),
        ("configuration", "Configuration", _table(["option", "value"], [[k, _yaml_value(v)] for k, v in config.items()])),
        ("data", "Data", _data(run_dir / "split.csv")),
        ("curves", "Training curves", _image(pictures.get("curves"), "training curves")
         + '<p class="muted">The shaded band is the gap between training and validation: a widening gap is '
           "overfitting.</p>"),
    ]
    if evaluation is not None:
        sections += [
            ("metrics", f"Metrics on the {evaluation.split} split", _metrics(evaluation.metrics)),
            ("confusion", "Confusion matrix", _image(evaluation.pictures.get("confusion_matrix"), "confusion matrix")
             + _confusions(evaluation.metrics)),
            ("roc", "ROC curves", _image(evaluation.pictures.get("roc"), "ROC curves")),
            ("reliability", "Reliability", _reliability(evaluation)),
        ]
    sections += [
        ("samples", "Samples", _image(pictures.get("samples"), "sample images")),
        ("augmentation", "Augmented examples", _image(pictures.get("augmentation"), "augmented examples")),
    ]
    if evaluation is not None:
        mistakes = evaluation.pictures.get("worst_mistakes")
        sections.append(("mistakes", "Worst mistakes", _image(mistakes, "worst mistakes") if mistakes
                         else "<p>No image of this split was misclassified.</p>"))
        if evaluation.metrics.get("label_issues") is not None:
            sections.append(("label-issues", "Likely label errors", _issues(evaluation)))
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    body = "".join(_section(anchor, title, content) for anchor, title, content in sections)
    title = f"imgclf report: {config.get('model', '')} on {Path(str(config.get('data', ''))).name}"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="muted">run: {html.escape(str(run_dir))}</p><nav>{nav}</nav>{body}</body></html>')
    return write_text_atomic(path, page)


def _yaml_value(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()


def _summary(config: dict[str, Any], bundle_metrics: dict[str, Any], evaluation: Evaluation | None) -> str:
    cards = [("model", config.get("model")), ("strategy", config.get("strategy")),
             ("epochs", bundle_metrics.get("epochs_trained")),
             ("training time", f"{bundle_metrics.get('train_seconds', 0):.0f} s")]
    for split in ("val", "test"):
        if f"{split}_accuracy" in bundle_metrics:
            cards.append((f"{split} accuracy", _percent(bundle_metrics[f"{split}_accuracy"])))
    if evaluation is not None:
        cards.append((f"macro F1 ({evaluation.split})", f"{evaluation.metrics['macro_avg']['f1']:.3f}"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><span class="muted">{html.escape(name)}</span><b>{html.escape(str(value))}</b></div>'
        for name, value in cards) + "</div>"


def _data(split_file: Path) -> str:
    if not split_file.is_file():
        return '<p class="muted">(no split.csv in this run)</p>'
    dataset = read_manifest(split_file)
    counts = dataset.class_counts()
    splits = dataset.splits
    rows = [[name, *(counts[name].get(split, 0) for split in splits)] for name in sorted(counts)]
    rows.append(["total", *(sum(counts[name].get(split, 0) for name in counts) for split in splits)])
    return _table(["class", *splits], rows)


def _metrics(metrics: dict[str, Any]) -> str:
    overall = [["images", metrics["images"]], ["accuracy", _percent(metrics["accuracy"])]]
    overall += [[name.replace("_", " "), _percent(metrics[name])] for name in sorted(metrics)
                if name.startswith("top_")]
    overall += [["macro F1", metrics["macro_avg"]["f1"]], ["weighted F1", metrics["weighted_avg"]["f1"]],
                ["ROC-AUC (one vs rest)", metrics.get("roc_auc_ovr")], ["log loss", metrics["log_loss"]],
                ["expected calibration error", metrics["expected_calibration_error"]]]
    per_class = [[name, row["precision"], row["recall"], row["f1"], row["support"]]
                 for name, row in metrics["per_class"].items()]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        per_class.append([label, metrics[key]["precision"], metrics[key]["recall"], metrics[key]["f1"],
                          metrics["images"]])
    return _table(["metric", "value"], overall) + _table(["class", "precision", "recall", "F1", "support"], per_class)


def _reliability(evaluation: Evaluation) -> str:
    """The reliability diagram; for a calibrated model, before and after temperature scaling side by side."""
    after = _image(evaluation.pictures.get("reliability"), "reliability diagram")
    note = '<p class="muted">Bars on the diagonal mean the predicted probabilities can be taken at their word.</p>'
    before = evaluation.metrics.get("uncalibrated")
    if before is None:
        return after + note
    figures = _table(["", "before", f"after (T = {before['temperature']:.3f})"],
                     [["expected calibration error", before["expected_calibration_error"],
                       evaluation.metrics["expected_calibration_error"]],
                      ["log loss", before["log_loss"], evaluation.metrics["log_loss"]]])
    pictures = (f'<div class="cards">{_image(evaluation.pictures.get("reliability_uncalibrated"), "before")}'
                f"{after}</div>")
    return (figures + pictures + note + '<p class="muted">Temperature scaling (fitted on the validation split) '
            "divides every logit by T: it changes the probabilities, never the predicted class.</p>")


def _confusions(metrics: dict[str, Any]) -> str:
    pairs = metrics.get("most_confused") or []
    if not pairs:
        return ""
    return "<h3>Most confused pairs</h3>" + _table(["true", "predicted as", "images"],
                                                    [[p["true"], p["predicted"], p["count"]] for p in pairs])


def _issues(evaluation: Evaluation) -> str:
    issues = evaluation.label_issues
    if not issues:
        return "<p>No image's label is confidently contradicted by the model.</p>"
    rows = [[issue["path"], issue["given"], issue["predicted"], _percent(issue["given_probability"]),
             _percent(issue["predicted_probability"])] for issue in issues[:50]]
    return (_image(evaluation.pictures.get("label_issues"), "likely label errors")
            + f"<p>{len(issues)} image(s) flagged; all in label_issues.csv.</p>"
            + _table(["image", "given label", "model says", "p(given)", "p(model)"], rows))
