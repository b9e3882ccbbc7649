"""``MODEL_CARD.md`` in every bundle: the page a reviewer, an auditor or a model registry expects.

Hugging Face's model-card conventions: YAML front matter (``library_name``,
``tags``, ``model-index`` with the held-out results), then intended use,
data, metrics overall and per class, calibration, decision thresholds, known
limitations, training, lineage and how to reproduce. Every figure is copied
from ``model.json``'s metrics (overall, calibration) or the evaluation's
``metrics.json`` (per class) as stored, never recomputed, so the card cannot
disagree with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imgclf.deploy.bundle import BundleInfo, read_bundle_info
from imgclf.deploy.metadata import weights_file_digest
from imgclf.evaluation.evaluate import Evaluation
from imgclf.files import write_text_atomic
from imgclf.runs import RunDirectory

CARD_FILE = "MODEL_CARD.md"
WEAKEST = 3  # classes named as the weakest, by F1
# the options a reader needs to judge the training, in this order (the full config is in model.json)
SUMMARY_OPTIONS = ("model", "pretrained", "strategy", "image_size", "resize", "epochs", "time_budget", "batch_size",
                   "optimizer", "lr", "weight_decay", "augment", "mixup", "cutmix", "label_smoothing", "tta",
                   "class_weights", "balanced_sampling", "backend", "precision", "seed")


def write_model_card(bundle: Path, evaluation: Evaluation | None = None) -> Path:
    """Write ``bundle/MODEL_CARD.md`` from its ``model.json``, its run (when it has one) and ``evaluation``."""
    info = read_bundle_info(bundle)
    run = RunDirectory(bundle.parent)
    return write_text_atomic(bundle / CARD_FILE, model_card(info, bundle, run, evaluation))


def model_card(info: BundleInfo, bundle: Path, run: RunDirectory, evaluation: Evaluation | None) -> str:
    """The card's Markdown text."""
    name = bundle.parent.name if bundle.name == "model" else bundle.name
    parts = [
        "---\n" + yaml.safe_dump(front_matter(info, name, evaluation), sort_keys=False) + "---\n",
        f"# Model card: {name}\n",
        _intended_use(info),
        _data(run),
        _metrics(info, evaluation),
        _calibration(info),
        _thresholds(info),
        _limitations(run, evaluation),
        _training(info, run),
        _lineage(info, bundle, run),
        _reproduce(bundle, run),
    ]
    return "\n".join(parts)


def front_matter(info: BundleInfo, name: str, evaluation: Evaluation | None) -> dict[str, Any]:
    """Hugging Face's model-card metadata; ``model-index`` holds the held-out accuracies exactly as model.json does."""
    results = [{"task": {"type": "image-classification"},
                "dataset": {"name": Path(str(info.config.get("data", "") or name)).name, "type": "imagefolder",
                            "split": split},
                "metrics": [{"type": "accuracy", "name": f"{split} accuracy", "value": info.metrics[key]}]}
               for split in ("val", "test") if (key := f"{split}_accuracy") in info.metrics]
    return {"library_name": "imgclf", "pipeline_tag": "image-classification",
            "tags": ["imgclf", "image-classification", info.architecture or info.kind],
            "metrics": ["accuracy"], "model-index": [{"name": name, "results": results}]}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _intended_use(info: BundleInfo) -> str:
    task = ("multi-label classification (every label whose probability reaches its threshold)" if info.multilabel
            else "single-label classification (one class per image)")
    return (f"## Intended use\n\n{task.capitalize()} of {info.channels}-channel images into {len(info.classes)} "
            f"classes: {', '.join(info.classes)}. Images are resized to {info.image_size} px ({info.resize}). "
            "It knows only these classes: an image of anything else still gets one of them, so check the "
            "confidence, and check the per-class figures below before relying on a class. Not evaluated for "
            "decisions about people.\n")


def _data(run: RunDirectory) -> str:
    if not run.has_split():
        return "## Data\n\nNo split.csv beside this bundle (an ensemble or a copied bundle): see its members.\n"
    dataset = run.read_split()
    counts, splits = dataset.class_counts(), dataset.splits
    rows = [[name, *(counts[name].get(split, 0) for split in splits)] for name in sorted(counts)]
    rows.append(["total", *(sum(counts[name].get(split, 0) for name in counts) for split in splits)])
    source = run.read_config().data if run.config_file.is_file() else dataset.source
    return (f"## Data\n\nSource: `{source}`. Images per class and split (the split is in "
            f"`{run.split_file.name}`):\n\n" + _table(["class", *splits], rows))


def _metrics(info: BundleInfo, evaluation: Evaluation | None) -> str:
    overall = [[f"{split} {what}", info.metrics[f"{split}_{what}"]] for split in ("val", "test")
               for what in ("accuracy", "loss", "images") if f"{split}_{what}" in info.metrics]
    text = "## Metrics\n\nScored by this bundle as `imgclf evaluate` scores it (model.json):\n\n"
    text += _table(["metric", "value"], overall) if overall else "No held-out split was scored.\n"
    if evaluation is None or "per_class" not in evaluation.metrics:
        return text
    metrics = evaluation.metrics
    per_class = metrics["per_class"]
    rows = [[name, row["precision"], row["recall"], row["f1"], row["support"]] for name, row in per_class.items()]
    weakest = sorted((name for name in per_class if per_class[name]["f1"] < 1.0),
                     key=lambda name: (per_class[name]["f1"], name))[:WEAKEST]
    return (text + f"\nPer class on the {evaluation.split} split ({metrics['images']} images; "
            f"evaluation/metrics.json):\n\n" + _table(["class", "precision", "recall", "F1", "support"], rows)
            + f"\nWeakest classes (lowest F1): {', '.join(weakest) or 'none, every class scored F1 1.0'}.\n")


def _calibration(info: BundleInfo) -> str:
    calibration = info.metrics.get("calibration")
    if not calibration:
        return f"## Calibration\n\nNot calibrated (temperature {info.temperature}).\n"
    rows = [["temperature", calibration["temperature"]], ["validation images", calibration["images"]],
            ["log loss before", calibration["nll_before"]], ["log loss after", calibration["nll_after"]],
            ["expected calibration error before", calibration["ece_before"]],
            ["expected calibration error after", calibration["ece_after"]]]
    return ("## Calibration\n\nTemperature scaling fitted on the validation split: logits are divided by the "
            "temperature before the softmax (it never changes the predicted class).\n\n"
            + _table(["", "value"], rows))


def _thresholds(info: BundleInfo) -> str:
    if not info.thresholds:
        return "## Decision thresholds\n\nNone: the most probable class is the answer.\n"
    rows = [[name, value] for name, value in info.thresholds.items()]
    who = f"Positive class: {info.positive}. " if info.positive else ""
    return (f"## Decision thresholds\n\n{who}Chosen on the validation split for {info.threshold_goal or 'F1'}:\n\n"
            + _table(["class", "threshold"], rows))


def _limitations(run: RunDirectory, evaluation: Evaluation | None) -> str:
    from imgclf.data.inspect import imbalance_warning

    lines = []
    if evaluation is not None:
        lines += [f"- `{pair['true']}` is mistaken for `{pair['predicted']}` ({evaluation.split} images: "
                  f"{pair['count']})" for pair in evaluation.metrics.get("most_confused") or []]
        issues = evaluation.metrics.get("label_issues")
        if issues:
            lines.append(f"- {issues} image(s) of the {evaluation.split} split are likely mislabelled "
                         "(evaluation/label_issues.csv): the figures above count them as the files say")
        if evaluation.skipped:
            lines.append(f"- {len(evaluation.skipped)} image(s) could not be read and were not scored")
    if run.has_split():
        warning = imbalance_warning(run.read_split().split_items("train"))
        lines += [f"- {warning}"] if warning else []
    return "## Known limitations\n\n" + ("\n".join(lines) if lines else "None found in this run's evaluation.") + "\n"


def _training(info: BundleInfo, run: RunDirectory) -> str:
    config = info.config
    rows = [[name, config[name]] for name in SUMMARY_OPTIONS if name in config]
    rows += [[name.replace("_", " "), info.metrics[name]] for name in ("epochs_trained", "best_epoch",
                                                                       "train_seconds", "parameters")
             if name in info.metrics]
    chosen = run.read_choices()
    who = ("" if chosen is None else "You set: " + (", ".join(f"{key}={value}" for key, value in chosen.items()
                                                              if key not in ("data", "out")) or "nothing")
           + "; imgclf chose the rest from the data.\n\n")
    return "## Training\n\n" + who + _table(["option", "value"], rows) + "\nEvery option: model.json's `config`.\n"


def _lineage(info: BundleInfo, bundle: Path, run: RunDirectory) -> str:
    rows: list[list[Any]] = [["imgclf version", info.imgclf_version], ["bundle format", info.format_version],
            ["backend", info.backend], ["architecture", info.architecture]]
    if info.kind == "model":
        rows.append(["weights sha256", weights_file_digest(bundle)])
    rows += [["member", f"{member['name']} (weight {member['weight']})"] for member in info.members]
    if run.config_file.is_file():
        rows += [["run", run.path.name], ["data", info.config.get("data", "")]]
    return "## Lineage\n\n" + _table(["", ""], rows)


def _reproduce(bundle: Path, run: RunDirectory) -> str:
    if not run.config_file.is_file():
        return "## How to reproduce\n\nRebuild the ensemble from its members with `imgclf ensemble`.\n"
    return ("## How to reproduce\n\nFrom the run directory: train again on the same split (split.csv names each "
            "image's split, which is kept) with the same resolved options, then score it:\n\n"
            f"```\nimgclf train {run.split_file.name} --config {run.config_file.name} --out runs/again\n"
            "imgclf evaluate runs/again\n```\n\n"
            f"Predict with this bundle: `imgclf predict {bundle.name} IMAGES`.\n")
