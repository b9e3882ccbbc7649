"""How ``update`` and ``diff`` show their results: the gate's per-class table, the data and class changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from imgclf.cli.render import TABLE_LIMIT
from imgclf.console import console

if TYPE_CHECKING:
    from imgclf import api


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def print_gate(result: api.UpdateResult) -> None:
    """Each old class before and after on the old held-out images, the new classes' scores, and the verdict."""
    gate = result.gate
    table = Table(title=f"{gate.metric} on the old {gate.split} images", title_justify="left")
    for name in ("class", "images", "before", "after", "change"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for change in gate.classes:
        verdict = "[red]dropped[/red]" if change.failed else "" if change.judged else "[dim]too few to judge[/dim]"
        table.add_row(escape(change.name), str(change.support), _percent(change.before), _percent(change.after),
                      f"{0.0 - change.drop:+.1f} pts {verdict}".strip())
    for name, score in gate.new_classes.items():
        table.add_row(f"{escape(name)} [green](new)[/green]", str(score.support), "", _percent(score.score), "")
    console.print(table)
    verdict = "passed" if gate.passed else "FAILED, kept with --force"
    console.print(f"gate {verdict} (max drop {gate.max_drop:g} points, classes with {gate.min_support}+ images); "
                  f"model {result.model_dir} (version {result.lineage['id']}), report {result.run_dir / 'report.html'}")


def print_diff(result: api.RunDiff) -> None:
    """Counts of each kind of data change (with the first images of each), then every class's score in both runs."""
    console.print(f"{escape(str(result.a))} -> {escape(str(result.b))}: {len(result.added)} added, "
                  f"{len(result.removed)} removed, {len(result.relabelled)} relabelled, {len(result.moved)} moved "
                  f"between splits, {len(result.changed)} with changed content")
    rows = ([("added", row.path, "", f"{'|'.join(row.labels)} ({row.split})") for row in result.added]
            + [("removed", row.path, f"{'|'.join(row.labels)} ({row.split})", "") for row in result.removed]
            + [("relabelled", a.path, "|".join(a.labels), "|".join(b.labels)) for a, b in result.relabelled]
            + [("moved", a.path, a.split, b.split) for a, b in result.moved]
            + [("changed", a.path, a.digest[:8], b.digest[:8]) for a, b in result.changed])
    if rows:
        images = Table(title="images" + (f" (first {TABLE_LIMIT}; --json lists all)" if len(rows) > TABLE_LIMIT else ""),
                       title_justify="left")
        for name in ("change", "path", "before", "after"):
            images.add_column(name)
        for row in rows[:TABLE_LIMIT]:
            images.add_row(*(escape(cell) for cell in row))
        console.print(images)
    if result.classes:
        classes = Table(title=f"{result.classes[0].metric} per class (held-out split of each run)", title_justify="left")
        for name in ("class", "before", "after", "change"):
            classes.add_column(name, justify="left" if name == "class" else "right")
        for delta in result.classes:
            classes.add_row(escape(delta.name), _percent(delta.a), _percent(delta.b),
                            "" if delta.change is None else f"{100 * delta.change:+.1f} pts")
        console.print(classes)
