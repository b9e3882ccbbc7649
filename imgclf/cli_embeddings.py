"""The embedding commands of ``imgclf``: embed, similar, index build/query, match.

Kept apart from :mod:`imgclf.cli` so each file stays about one thing; they
register on the same Typer app, share its error handling and, like every
command, import torch only when they run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
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

index_app = typer.Typer(help="Search images by similarity: build an index of a folder or catalogue, then query it.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the embedding commands to the ``imgclf`` app."""
    app.command(epilog="Examples: imgclf embed tf_efficientnet_lite0 photos/  |  "
                       "imgclf embed runs/shop photos/ --out embeddings.npz")(embed)
    app.command(epilog="Example: imgclf similar tf_efficientnet_lite0 a.jpg b.jpg")(similar)
    app.add_typer(index_app, name="index")
    app.command(epilog="Examples: imgclf match catalog.csv --image new.jpg --name \"blue denim jacket\"  |  "
                       "imgclf match catalog.csv --evaluate")(match)


def embed(
    model: ModelArgument,
    inputs: Images,
    weights: WeightsOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Also save paths and vectors to this .npz file.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side for a backbone (default 224, as train "
                                                           "uses it; a trained model keeps its own).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
) -> None:
    """Compute and cache embeddings (pooled features), so probes, search and matching reuse them."""
    result = api.embed(model, inputs, weights=weights, out=out, image_size=image_size, batch_size=batch_size)
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
    catalog: Annotated[Path, typer.Argument(help="Catalogue CSV: image,name,category[,sku] (paths relative to it).",
                                            show_default=False)],
    image: Annotated[Optional[Path], typer.Option(help="Photo of the new product.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the new product.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Hold out part of the catalogue and report category "
                                                              "accuracy of image, name and combined matching.")] = False,
    model: Annotated[str, typer.Option(help="Backbone or trained model for the image embeddings.")] =
        api.DEFAULT_EMBEDDING_MODEL,
    weights: WeightsOption = None,
    image_weight: Annotated[Optional[float], typer.Option(help="Share of the photo in the final score, 0..1 "
                                                               "(default 0.5; --evaluate chooses one).")] = None,
    k: Annotated[Optional[int], typer.Option("-k", "--top-k", help="Matches that vote for the category (default 5).")
                 ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split for --evaluate.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Suggest a category for a new product from its photo and name, with the closest catalogue items."""
    if evaluate:
        if image is not None or name is not None:
            raise ImgclfError("--evaluate measures the catalogue itself; leave out --image and --name")
        _print_match_evaluation(api.evaluate_match(catalog, model=model, weights=weights, k=k, seed=seed), as_json)
        return
    result = api.match(catalog, image=image, name=name, model=model, weights=weights, image_weight=image_weight, k=k)
    if as_json:
        print(json.dumps({"category": result.category, "confidence": round(result.confidence, 4),
                          "matches": [{"score": round(m.score, 4), "image_score": round(m.image_score, 4),
                                       "name_score": round(m.name_score, 4), **m.item} for m in result.matches],
                          "skipped": [{"image": path, "error": error} for path, error in result.skipped]},
                         indent=2))
        return
    for path, error in result.skipped:
        console.print(f"[yellow]skipped catalogue image {path}: {error}[/]")
    console.print(f"suggested category: [bold]{result.category}[/] ({result.confidence:.0%} of the top-match vote)")
    table = Table(title="closest catalogue items", title_justify="left")
    for column in ("#", "score", "image", "name"):
        table.add_column(column, justify="right" if column in ("#", "score", "image") else "left")
    table.add_column("catalogue name")
    table.add_column("category")
    table.add_column("sku")
    for rank, scored in enumerate(result.matches, start=1):
        item = scored.item
        table.add_row(str(rank), f"{scored.score:.3f}", f"{scored.image_score:.3f}", f"{scored.name_score:.3f}",
                      item["name"], item["category"], item.get("sku", ""))
    console.print(table)


def _print_match_evaluation(evaluation: api.MatchEvaluation, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image_weight": evaluation.image_weight, "test_accuracy": evaluation.test_accuracy,
                          "validation_accuracy": evaluation.validation_accuracy, "k": evaluation.k,
                          "items": {"reference": evaluation.reference_items, "validation": evaluation.validation_items,
                                    "test": evaluation.test_items}}, indent=2))
        return
    table = Table(title=f"category accuracy on {evaluation.test_items} held-out items "
                        f"(compared with {evaluation.reference_items} reference items, top-{evaluation.k} vote)",
                  title_justify="left")
    table.add_column("scoring")
    table.add_column("test accuracy", justify="right")
    for label, key in (("image only", "image"), ("name only", "name"),
                       (f"combined (image weight {evaluation.image_weight:g})", "combined")):
        table.add_row(label, f"{evaluation.test_accuracy[key]:.1%}")
    console.print(table)
    console.print(f"image weight {evaluation.image_weight:g} chosen on {evaluation.validation_items} validation items "
                  f"({evaluation.validation_accuracy:.1%}); use it with --image-weight {evaluation.image_weight:g}")
