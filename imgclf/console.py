"""Shared Rich console and progress bars, so every command looks the same."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# stderr, so that `--json` and other machine output on stdout stays clean.
console = Console(stderr=True, highlight=False)


def progress_bar(transient: bool = False) -> Progress:
    """A progress bar with count, rate-derived ETA and elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal and console.quiet,
    )


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate over ``items`` while showing a progress bar with an ETA."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
