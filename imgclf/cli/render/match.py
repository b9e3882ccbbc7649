"""How ``match`` shows its results, as tables or (``--json``) JSON: one suggestion, a batch summary, an evaluation."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from imgclf.console import console

if TYPE_CHECKING:
    from imgclf import api


def print_suggestion(suggestion: api.Suggestion, as_json: bool) -> None:
    """The suggested category, how sure, per level, the runners-up and the closest catalogue items."""
    if as_json:
        print(json.dumps({"category": suggestion.category, "confidence": round(suggestion.confidence, 4),
                          "sure": suggestion.sure,
                          "ranking": [{"category": label, "probability": round(p, 4)} for label, p in suggestion.ranking],
                          "levels": [{"level": level.depth, "category": level.label,
                                      "confidence": round(level.probability, 4)} for level in suggestion.levels],
                          "evidence": {key: None if value != value else round(value, 4)
                                       for key, value in suggestion.evidence.items()},
                          "matches": [{"score": round(m.score, 4), "image_score": round(m.image_score, 4),
                                       "name_score": round(m.name_score, 4), **m.item} for m in suggestion.matches],
                          "skipped": [{"image": path, "error": error} for path, error in suggestion.skipped]},
                         indent=2))
        return
    for path, error in suggestion.skipped:
        console.print(f"[yellow]skipped catalogue image {escape(path)}: {escape(error)}[/]")
    sure = "" if suggestion.sure else " [yellow](below --min-confidence: check it)[/]"
    console.print(f"suggested category: [bold]{suggestion.category}[/] ({suggestion.confidence:.0%} sure){sure}")
    if len(suggestion.levels) > 1:
        console.print("  per level: " + "  >  ".join(f"{level.label.rsplit('/', 1)[-1]} {level.probability:.0%}"
                                                     for level in suggestion.levels))
    console.print("  also: " + ", ".join(f"{label} {p:.0%}" for label, p in suggestion.ranking[1:]))
    table = Table(title="closest catalogue items", title_justify="left")
    for column in ("#", "score", "image", "name"):
        table.add_column(column, justify="right")
    for column in ("catalogue name", "category", "sku"):
        table.add_column(column)
    for rank, scored in enumerate(suggestion.matches, start=1):
        item = scored.item
        table.add_row(str(rank), f"{scored.score:.3f}", f"{scored.image_score:.3f}", f"{scored.name_score:.3f}",
                      item["name"], item["category"], item.get("sku", item.get("product", "")))
    console.print(table)


def print_batch(summary: api.BatchSummary, as_json: bool) -> None:
    """What a batch match wrote: products matched now or resumed, unsure, unmatched, and how fast."""
    if as_json:
        print(json.dumps({"out": str(summary.out), "products": summary.products, "resumed": summary.resumed,
                          "unsure": summary.unsure, "failed": summary.failed, "seconds": round(summary.seconds, 3),
                          "products_per_second": round(summary.rate, 1), "scoring": summary.scoring}, indent=2))
        return
    table = Table(title=f"suggestions for {summary.products:,} products written to {summary.out}",
                  title_justify="left")
    table.add_column("")
    table.add_column("", justify="right")
    for label, value in (("scoring", summary.scoring), ("matched now", f"{summary.products - summary.resumed:,}"),
                         ("from an interrupted run", f"{summary.resumed:,}"),
                         ("below --min-confidence (check them)", f"{summary.unsure:,}"),
                         ("not matched (no usable photo or name)", f"{summary.failed:,}"),
                         ("time", f"{summary.seconds:.1f} s ({summary.rate:,.0f} products/s)")):
        table.add_row(label, value)
    console.print(table)


def print_match_evaluation(evaluation: api.MatchEvaluation, as_json: bool) -> None:
    """Held-out accuracy of each way of scoring, overall, at a coverage and per category level."""
    coverage = f"{evaluation.coverage:.0%}"
    if as_json:
        print(json.dumps({"image_weight": evaluation.image_weight, "k": evaluation.k, "coverage": evaluation.coverage,
                          "results": {name: asdict(result) for name, result in evaluation.results.items()},
                          "reference": {"items": evaluation.reference_items, "products": evaluation.reference_products},
                          "test": {"items": evaluation.test_items, "products": evaluation.test_products},
                          "matcher_trained_on": evaluation.trained_on}, indent=2))
        return
    table = Table(title=f"category accuracy on {evaluation.test_products:,} held-out products "
                        f"({evaluation.test_items:,} photos), compared with {evaluation.reference_products:,} "
                        f"others ({evaluation.reference_items:,} photos)", title_justify="left")
    table.add_column("scoring")
    for column in ("accuracy", "top-3", f"accuracy on the surest {coverage}", "at confidence"):
        table.add_column(column, justify="right")
    depth = max(len(result.level_accuracy) for result in evaluation.results.values())
    for level in range(1, depth + 1):
        table.add_column(f"level {level}", justify="right")
    labels = {"image": "image only", "name": "name only", "blend": f"blend (image weight {evaluation.image_weight:g})",
              "learned": "learned"}
    for key, result in evaluation.results.items():
        table.add_row(labels[key], f"{result.accuracy:.1%}", f"{result.top3_accuracy:.1%}",
                      f"{result.accuracy_at_coverage:.1%}", f"≥ {result.threshold:.2f}",
                      *(f"{value:.1%}" for value in result.level_accuracy))
    console.print(table)
    console.print(f"the blend's image weight and the learned matcher were fitted on {evaluation.trained_on:,} "
                  "photos of products held out of the reference part, never on the test products")
