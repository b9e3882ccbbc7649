"""Shared Rich console, progress bars and the logging handler that prints library messages on it.

Library modules never print: they log (``logging.getLogger(__name__)``,
``info`` for progress, ``warning`` for warnings) under the "imgclf" logger,
which holds only a NullHandler, so a Python caller sees nothing unless it
configures logging, and ``caplog`` or any handler can capture it. The CLI
installs :func:`console_logging`: each message one line on stderr, warnings
yellow, as the commands always printed them.

Progress bars are display, not messages: they draw on the console only while
the "imgclf" logger is enabled for INFO (the CLI's handler, or a caller's
``logging.basicConfig(level=logging.INFO)``), so one switch shows or hides
everything a run reports, and a service that calls the API gets no bars in
its logs.
"""

from __future__ import annotations

import logging
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

LOGGER = "imgclf"
HEADING = {"heading": True}  # log.info(..., extra=HEADING): the console draws the message as a rule across it


class ConsoleHandler(logging.Handler):
    """Each record as one line on the console: warnings and errors yellow, headings as a rule, never markup."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if getattr(record, "heading", False):
                console.rule(message, style="bold")
            else:
                console.print(message, style="yellow" if record.levelno >= logging.WARNING else None,
                              markup=False, soft_wrap=True)
        except Exception:  # noqa: BLE001  logging's contract: a handler reports its own failure, never raises
            self.handleError(record)


@contextmanager
def console_logging() -> Iterator[None]:
    """While inside: the "imgclf" logger's INFO and up printed by a :class:`ConsoleHandler` (and not passed on to
    the root logger's handlers, which would print them twice); afterwards as it was."""
    logger = logging.getLogger(LOGGER)
    handler, level, propagate = ConsoleHandler(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def showing_progress() -> bool:
    """Whether progress bars draw: while someone listens to imgclf's progress messages (see the module's text)."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)


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
        disable=disable or not showing_progress(),
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
        disable=not showing_progress(),
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
