"""How ``evaluate`` and ``calibrate`` show their results: metric tables and one-line summaries on the console."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from imgclf.console import console

if TYPE_CHECKING:
    from imgclf.deploy.calibration import Calibration
    from imgclf.evaluation.evaluate import Evaluation


def print_evaluation(result: Evaluation, label_issues: bool) -> None:
    """The metrics of a single-label or multi-label model, the label issues found, and where the files are."""
    if result.metrics.get("multilabel"):
        _print_multilabel_metrics(result)
    else:
        _print_single_label_metrics(result)
    if label_issues:
        console.print(f"likely label errors: {len(result.label_issues)} (list: {result.out / 'label_issues.csv'})")
    console.print(f"wrote {result.out / 'metrics.json'} and pictures in {result.out}")


def _print_multilabel_metrics(result: Evaluation) -> None:
    """Per-label AP, threshold, precision, recall and F1, then the averages, at the thresholds chosen on val."""
    metrics = result.metrics
    table = Table(title=f"{metrics['images']:,} images ({result.split}), labels at their thresholds "
                        f"({escape(str(metrics['threshold_goal']))})")
    for name in ("label", "AP", "threshold", "precision", "recall", "F1", "support"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for name, row in metrics["per_label"].items():
        ap = "" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        table.add_row(escape(name), ap, f"{row['threshold']:.3f}", f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}", f"{row['support']:,}")
    console.print(table)
    half, cardinality = metrics["at_0.5"], metrics["label_cardinality"]
    console.print(f"mAP {metrics['mean_average_precision'] or 0:.4f}  micro-F1 {metrics['micro_f1']:.4f} "
                  f"(at 0.5: {half['micro_f1']:.4f})  macro-F1 {metrics['macro_f1']:.4f}  samples-F1 "
                  f"{metrics['samples_f1']:.4f}  subset accuracy {metrics['subset_accuracy']:.2%} (at 0.5: "
                  f"{half['subset_accuracy']:.2%})  Hamming loss {metrics['hamming_loss']:.4f}  labels per image "
                  f"{cardinality['predicted']:.2f} said / {cardinality['true']:.2f} true")


def _print_single_label_metrics(result: Evaluation) -> None:
    """Per-class precision, recall and F1, the summary scores, the decision, levels and the most confused pairs."""
    metrics = result.metrics
    table = Table(title=f"{metrics['images']:,} images ({result.split})")
    table.add_column("class")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", f"{row['support']:,}")
    table.add_section()
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        table.add_row(label, *(f"{metrics[key][name]:.3f}" for name in ("precision", "recall", "f1")), "")
    console.print(table)
    extras = [f"accuracy {metrics['accuracy']:.2%}"]
    extras += [f"{name.replace('_', '-').replace('-accuracy', '')} {metrics[name]:.2%}" for name in sorted(metrics)
               if name.startswith("top_")]
    if metrics.get("roc_auc_ovr") is not None:
        extras.append(f"ROC-AUC {metrics['roc_auc_ovr']:.4f}")
    extras += [f"log loss {metrics['log_loss']:.4f}", f"ECE {metrics['expected_calibration_error']:.4f}"]
    console.print("  ".join(extras))
    if "decision" in metrics:
        decision = metrics["decision"]
        console.print(f"decision: {decision['positive']} at P >= {decision['threshold']:.4g} ({decision['goal']}): "
                      f"precision {decision['precision']:.3f}, recall {decision['recall']:.3f}, "
                      f"F1 {decision['f1']:.3f}, false positive rate {decision['false_positive_rate']:.3f}")
    for level in metrics.get("levels", []):
        console.print(f"level {level['depth']} ({len(level['classes'])} categories): accuracy {level['accuracy']:.2%}  "
                      f"macro F1 {level['macro_f1']:.3f}")
    for pair in metrics["most_confused"][:3]:
        console.print(f"confused: {pair['true']} → {pair['predicted']} ({pair['count']})")


def print_calibration(result: Calibration, split: str) -> None:
    """The temperature found and the log-likelihood and calibration error before and after it."""
    table = Table(title=f"temperature T = {result.temperature:.4f} on {result.images:,} {split} images",
                  title_justify="left")
    for name in ("", "before", "after"):
        table.add_column(name, justify="right" if name else "left")
    table.add_row("negative log-likelihood", f"{result.nll_before:.4f}", f"{result.nll_after:.4f}")
    table.add_row("expected calibration error", f"{result.ece_before:.4f}", f"{result.ece_after:.4f}")
    console.print(table)
