"""How the embedding commands show their results: ``embed``'s summary and ``index query``'s neighbours."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from imgclf.console import console

if TYPE_CHECKING:
    from imgclf import api


def print_embeddings(result: api.FileEmbeddings, model: str, out: Path | None) -> None:
    """How many images were embedded, reused from the cache or unreadable, how fast, and where they went."""
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


def print_neighbours(results: list[tuple[Path, list[api.Neighbour], str]]) -> None:
    """For each query image, a table of its most similar indexed items with their columns (or its error)."""
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
