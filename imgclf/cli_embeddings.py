"""The embedding commands of ``imgclf``: embed, similar, index build/query, match.

Kept apart from :mod:`imgclf.cli` so each file stays about one thing; they
register on the same Typer app, share its error handling and, like every
command, import torch only when they run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from imgclf import api
from imgclf.console import console
from imgclf.errors import ImgclfError

ModelArgument = Annotated[str, typer.Argument(
    help="A backbone with pretrained weights (imgclf models --pretrained), or a trained model (runs/NAME).",
    show_default=False)]
WeightsOption = Annotated[Optional[Path], typer.Option(help="Weights file for the backbone (.safetensors or .pth).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
Images = Annotated[list[str], typer.Argument(help="Files, folders, globs, @list.txt, - for stdin, or a CSV with an "
                                                  "image column.", show_default=False)]

# The options of the commands that split their inputs among processes (embed here, predict in cli.py).
DeviceOption = Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu or cuda; with --nproc each "
                                                "process gets its own GPU.")]
NprocOption = Annotated[Optional[int], typer.Option(help="Split the inputs among N processes on this machine "
                                                         "(torchrun); the output is the same, resumable in parts.",
                                                    show_default=False)]

index_app = typer.Typer(help="Search images by similarity: build an index of a folder or catalogue, then query it.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the embedding commands to the ``imgclf`` app."""
    app.command(epilog="Examples: imgclf embed tf_efficientnet_lite0 photos/  |  "
                       "imgclf embed runs/shop photos/ --out embeddings.npz  |  "
                       "imgclf embed runs/shop photos/ --nproc 2")(embed)
    app.command(epilog="Example: imgclf similar tf_efficientnet_lite0 a.jpg b.jpg")(similar)
    app.add_typer(index_app, name="index")
    app.command(epilog="Examples: imgclf match catalog.csv --image new.jpg --name \"blue denim jacket\"  |  "
                       "imgclf match catalog.csv --evaluate  |  "
                       "imgclf match catalog.csv --queries new.csv --out suggestions.csv")(match)


def start_processes(nproc: int | None, device: str, check: Callable[[], None]) -> None:
    """With ``--nproc N``: refuse what N processes cannot do (``check``, the device), then run this command line
    under torchrun and exit with its code. Without: return, and the command runs here."""
    if nproc is None:
        return
    from imgclf import distributed

    check()
    distributed.check_nproc_device(nproc, device)
    raise typer.Exit(distributed.launch(nproc, sys.argv[1:]))


def embed(
    model: ModelArgument,
    inputs: Images,
    weights: WeightsOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Also save paths and vectors to this .npz file.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side for a backbone (default 224, as train "
                                                           "uses it; a trained model keeps its own).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: DeviceOption = "auto",
    nproc: NprocOption = None,
) -> None:
    """Compute and cache embeddings (pooled features), so probes, search and matching reuse them."""
    start_processes(nproc, device, lambda: api.check_distributable(None, list(inputs)))
    result = api.embed(model, inputs, weights=weights, out=out, image_size=image_size, batch_size=batch_size,
                       device=device)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return
    table = Table(title=f"embeddings of {len(result.paths):,} images by {model}", title_justify="left")
    table.add_column("")
    table.add_column("", justify="right")
    failed = int((~result.ok).sum())
    rate = result.computed / result.seconds if result.seconds > 0 else 0.0
    for name, value in (("width", f"{result.vectors.shape[1]:,}"), ("reused from cache", f"{result.reused:,}"),
                        ("computed now", f"{result.computed - failed:,}"), ("unreadable", f"{failed:,}"),
                        ("time", f"{result.seconds:.1f} s" + (f" ({rate:.0f} img/s)" if result.computed else "")),
                        ("saved to", str(out) if out else "cache only")):
        table.add_row(name, value)
    console.print(table)
    for path, error in zip(result.paths, result.errors):
        if error:
            console.print(f"[yellow]skipped {path}: {error}[/]")


def similar(
    model: ModelArgument,
    image_a: Annotated[Path, typer.Argument(help="First image.", show_default=False)],
    image_b: Annotated[Path, typer.Argument(help="Second image.", show_default=False)],
    weights: WeightsOption = None,
    as_json: JsonOption = False,
) -> None:
    """How similar two images are: a score in [0, 1] and what it means."""
    from imgclf.embeddings.similarity import verdict

    score = api.similar(model, image_a, image_b, weights=weights)
    if as_json:
        print(json.dumps({"a": str(image_a), "b": str(image_b), "similarity": round(score, 4),
                          "verdict": verdict(score)}))
        return
    console.print(f"similarity [bold]{score:.3f}[/]: {verdict(score)}")


@index_app.command("build", epilog="Example: imgclf index build tf_efficientnet_lite0 catalog.csv --out catalog-index")
def index_build(
    model: ModelArgument,
    source: Annotated[str, typer.Argument(help="A folder of images, or a CSV with an image column (other columns are "
                                                "kept and shown with results).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder to write the index to.")],
    weights: WeightsOption = None,
) -> None:
    """Embed every image of a folder or CSV into a searchable index."""
    index, skipped = api.build_index(model, source, out, weights=weights)
    console.print(f"indexed {len(index):,} images ({index.meta['dim']}-wide embeddings) into {out}")
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s); listed in {out / 'skipped_files.txt'}[/]")


@index_app.command("query", epilog="Example: imgclf index query catalog-index new.jpg -k 5")
def index_query(
    index: Annotated[Path, typer.Argument(help="An index folder from imgclf index build.", show_default=False)],
    images: Images,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Neighbours per image.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """The most similar indexed items for each image."""
    results = api.query_index(index, images, k=k)
    if as_json:
        print(json.dumps([{"image": str(path), "error": error,
                           "neighbours": [{"score": round(hit.score, 4), **hit.item} for hit in hits]}
                          for path, hits, error in results], indent=2))
        return
    for path, hits, error in results:
        if error:
            console.print(f"[red]{path}: {error}[/]")
            continue
        table = Table(title=str(path), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("similarity", justify="right")
        columns = [key for key in (hits[0].item if hits else {}) if key != "image"]
        table.add_column("image")
        for column in columns:
            table.add_column(column)
        for rank, hit in enumerate(hits, start=1):
            table.add_row(str(rank), f"{hit.score:.3f}", hit.item["image"], *(hit.item.get(c, "") for c in columns))
        console.print(table)


def match(
    catalog: Annotated[Path, typer.Argument(help="Catalogue CSV: image,name,category[,product or sku] (paths "
                                                 "relative to it); a category may be a path like Dairy/Milk.",
                                            show_default=False)],
    image: Annotated[Optional[Path], typer.Option(help="Photo of the new product.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the new product.")] = None,
    queries: Annotated[Optional[Path], typer.Option(help="Batch mode: a CSV of new products (image and/or name "
                                                         "columns, others are copied); needs --out.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Batch mode: the suggestions CSV to write (resumes a killed "
                                                     "run).")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Hold out whole products and report the accuracy of "
                                                              "image, name, blend and learned matching.")] = False,
    scoring: Annotated[str, typer.Option(help="learned (weights fitted on held-out products), blend (fixed image "
                                              "weight) or auto (learned from 30 products up).")] = "auto",
    image_weight: Annotated[Optional[float], typer.Option(help="Share of the photo in the blend, 0..1 (default 0.5); "
                                                               "implies --scoring blend.")] = None,
    min_confidence: Annotated[float, typer.Option(help="Suggest the deepest category level at least this sure.")
                              ] = 0.5,
    matcher: Annotated[Optional[Path], typer.Option(help="Folder for the fitted matcher (default: in the cache, "
                                                         "per catalogue and model).")] = None,
    model: Annotated[str, typer.Option(help="Backbone or trained model for the image embeddings.")] =
        api.DEFAULT_EMBEDDING_MODEL,
    weights: WeightsOption = None,
    k: Annotated[Optional[int], typer.Option("-k", "--top-k", help="Closest items shown, and that vote in the blend "
                                                                   "(default 5).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch mode: products per part written (a killed run redoes at "
                                                 "most one part).")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the held-out products for --evaluate.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Suggest categories for new products from photo and name: one, a batch CSV, or an honest evaluation."""
    options = dict(model=model, weights=weights, scoring=scoring, image_weight=image_weight, k=k,
                   min_confidence=min_confidence, matcher=matcher)
    if evaluate:
        if image is not None or name is not None or queries is not None:
            raise ImgclfError("--evaluate measures the catalogue itself; leave out --image, --name and --queries")
        _print_match_evaluation(api.evaluate_match(catalog, model=model, weights=weights, k=k, seed=seed), as_json)
        return
    if queries is not None or out is not None:
        if queries is None or out is None:
            raise ImgclfError("batch mode needs both --queries new.csv and --out suggestions.csv")
        if image is not None or name is not None:
            raise ImgclfError("--queries matches a whole CSV; leave out --image and --name")
        _print_batch(api.match_batch(catalog, queries, out, batch_size=batch_size, **options), as_json)
        return
    _print_suggestion(api.match(catalog, image=image, name=name, **options), as_json)


def _print_suggestion(suggestion: api.Suggestion, as_json: bool) -> None:
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


def _print_batch(summary: api.BatchSummary, as_json: bool) -> None:
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


def _print_match_evaluation(evaluation: api.MatchEvaluation, as_json: bool) -> None:
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
