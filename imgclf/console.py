"""Shared Rich console and progress bars, so every command looks the same."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# stderr, so that `--json` and other machine output on stdout stays clean.
console = Console(stderr=True, highlight=False)


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar with count, rate-derived ETA and elapsed time (``disable``: none, inside another bar)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


def training_progress() -> Progress:
    """The per-epoch bar of ``train``: steps, running loss and accuracy, images/s and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[accuracy]:.1%}  {task.fields[speed]:,.0f} img/s"),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Close file descriptor 2 to native code for a moment (TensorFlow's start-up notices bypass Python).

    Used around imports of TensorFlow, directly or through TensorBoard; an
    import that fails still raises its Python exception.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
