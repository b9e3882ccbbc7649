"""How ``predict`` and ``explain`` show their results: probability tables, a streamed count, summaries."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from imgclf.console import console

if TYPE_CHECKING:
    from imgclf.deploy.explain import Explanation
    from imgclf.deploy.predict import PredictionRow
    from imgclf.deploy.predict_parts import PartsSummary


def print_prediction_tables(rows: list[PredictionRow]) -> None:
    """Each image on a line of its own with its answer, then its top classes as a table."""
    for row in rows:
        if row.error:
            console.print(f"[red]{row.path}: {row.error}[/]")
            continue
        answer = row.prediction if row.labels is None else ", ".join(row.labels) or "(no label)"
        path = "  ›  ".join(f"{escape(level.label.rpartition('/')[2])} {level.probability:.0%}" for level in row.levels)
        # the heading is a line of its own: as a table title it would wrap at the narrow table's width, mid-path
        console.print(f"{escape(str(row.path))} → [bold]{escape(answer)}[/]", soft_wrap=True)
        table = Table(caption=path or None, caption_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        if row.labels is not None:
            table.add_column("said", justify="center")
        for name, probability in row.top:
            said = ["yes" if name in row.labels else ""] if row.labels is not None else []
            table.add_row(escape(name), f"{probability:.2%}", *said)
        console.print(table)


def stream_predictions(rows: Iterable[PredictionRow], write: Callable[[PredictionRow], None], total: int) -> None:
    """Write each row as it comes, under a progress bar, then the count, speed and unreadable images."""
    import time

    from imgclf.console import progress_bar

    started, count, errors = time.perf_counter(), 0, 0
    with progress_bar() as bar:
        task = bar.add_task("Predicting", total=total)
        for row in rows:
            write(row)
            count += 1
            errors += bool(row.error)
            bar.advance(task)
    seconds = time.perf_counter() - started
    console.print(f"{count:,} images in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} img/s), {errors} unreadable")


def print_parts_summary(summary: PartsSummary) -> None:
    """What a predict split among processes did, as rank 0 reports it."""
    console.print(f"{summary.images:,} images in {summary.seconds:.1f} s ({summary.rate:,.0f} img/s) on "
                  f"{summary.processes} processes, {summary.errors} unreadable"
                  + (f"; {summary.resumed:,} from an interrupted run's parts" if summary.resumed else ""))


def print_explanations(written: list[tuple[Path, Explanation]], skipped: list[tuple[str, str]], out: Path) -> None:
    """The overlays written (the first 20) with each image's top classes, then the images skipped and why."""
    table = Table(title=f"{len(written)} explanation(s) in {out}", title_justify="left")
    for name in ("image", "top classes", "file"):
        table.add_column(name)
    for path, explanation in written[:20]:
        table.add_row(path.name.removesuffix(".gradcam.png"),
                      ", ".join(f"{name} {probability:.0%}" for name, probability in explanation.top), str(path))
    console.print(table)
    for name, reason in skipped:
        console.print(f"[yellow]skipped {escape(name)}: {escape(reason)}[/]")
