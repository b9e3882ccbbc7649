"""The embedding commands: ``embed``, ``similar``, ``index build`` and ``index query`` (``match`` is its own module).

Like every command, they import torch only when they run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgclf import api
from imgclf.cli.options import (
    DeviceOption,
    Images,
    JsonOption,
    ModelArgument,
    NprocOption,
    Opt,
    WeightsOption,
    start_processes,
)
from imgclf.cli.render.embeddings import print_embeddings, print_neighbours
from imgclf.console import console

index_app = typer.Typer(help="Search images by similarity: build an index of a folder or catalogue, then query it.",
                        no_args_is_help=True)


def embed(
    model: ModelArgument,
    inputs: Images,
    weights: WeightsOption = None,
    out: Annotated[Optional[Path], Opt(help="Also save paths and vectors to this .npz file.")] = None,
    image_size: Annotated[Optional[int], Opt(help="Input side for a backbone (default 224, as train "
                                                  "uses it; a trained model keeps its own).")] = None,
    batch_size: Annotated[int, Opt(help="Images per forward pass.")] = 64,
    device: DeviceOption = "auto",
    nproc: NprocOption = None,
) -> None:
    """Compute and cache embeddings (pooled features), so probes, search and matching reuse them."""
    start_processes(nproc, device, lambda: api.check_distributable(None, list(inputs)))
    result = api.embed(model, inputs, weights=weights, out=out, image_size=image_size, batch_size=batch_size,
                       device=device)
    if result is not None:  # None: a torchrun rank other than 0, and rank 0 reports
        print_embeddings(result, model, out)


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
    out: Annotated[Path, Opt(help="Folder to write the index to.")],
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
    k: Annotated[int, Opt("-k", "--top-k", help="Neighbours per image.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """The most similar indexed items for each image."""
    results = api.query_index(index, images, k=k)
    if as_json:
        print(json.dumps([{"image": str(path), "error": error,
                           "neighbours": [{"score": round(hit.score, 4), **hit.item} for hit in hits]}
                          for path, hits, error in results], indent=2))
        return
    print_neighbours(results)


COMMANDS = {
    "embed": (embed, "Examples: imgclf embed tf_efficientnet_lite0 photos/  |  "
                     "imgclf embed runs/shop photos/ --out embeddings.npz  |  imgclf embed runs/shop photos/ --nproc 2"),
    "similar": (similar, "Example: imgclf similar tf_efficientnet_lite0 a.jpg b.jpg"),
}
