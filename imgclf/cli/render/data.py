"""How ``inspect`` and ``models`` show their results: Rich tables and summaries on the console."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from imgclf import api
from imgclf.console import console


def print_report(result: api.InspectResult) -> None:
    report = result.report
    console.print(f"[bold]{report.source}[/]: {len(report.classes)} classes, "
                  f"{sum(report.split_totals.values()):,} images", soft_wrap=True)
    table = Table()
    table.add_column("class")
    for split in report.splits:
        table.add_column(split, justify="right")
    for name in report.classes:
        table.add_row(name, *(f"{report.counts[name].get(split, 0):,}" for split in report.splits))
    table.add_section()
    table.add_row("[bold]total", *(f"[bold]{report.split_totals[split]:,}" for split in report.splits))
    console.print(table)
    if report.tree:
        console.print(_category_tree(report.tree))
    if report.sizes:
        width, height = report.sizes["width"], report.sizes["height"]
        console.print(f"sizes: width {width['min']}-{width['max']} (median {width['median']:g}), "
                      f"height {height['min']}-{height['max']} (median {height['median']:g}); "
                      f"modes: {', '.join(f'{mode} {count:,}' for mode, count in report.modes.items())}")
    if report.label_sets is not None:
        per_image = ", ".join(f"{count}: {images:,}" for count, images in report.label_sets["labels_per_image"].items())
        console.print(f"multi-label: images per number of labels {per_image}")
        pairs = report.label_sets["top_pairs"]
        if pairs:
            console.print("labels most often together: " + ", ".join(
                f"{escape(first)} + {escape(second)} {pair['images']:,}"
                for pair in pairs for first, second in [pair["labels"]]), soft_wrap=True)
    if report.ignored:
        console.print(f"ignored {len(report.ignored)} file(s) that are not images inside class folders")
    for warning in report.warnings:  # one line each, however long: they name files, which may hold [brackets]
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.broken_list:
        console.print(f"broken files listed in {result.broken_list}")
    if report.near_duplicates is not None:
        console.print(f"near-duplicate pairs: {len(report.near_duplicates)}"
                      + (f", drawn in {result.near_duplicates_picture}" if result.near_duplicates_picture else ""))
    for note in (report.quality or {}).get("notes", []):
        console.print(f"[dim]{escape(note)}[/]", soft_wrap=True)
    if result.findings_picture:
        console.print(f"the worst images of each kind of finding: {result.findings_picture}")
    console.print(f"report: {result.out / 'report.json'}" + (f", samples: {result.samples}" if result.samples else ""))


def _category_tree(counts: dict[str, int]) -> Tree:
    """The category paths as a Rich tree, each node with the images under it (parents before children: sorted)."""
    tree = Tree("[bold]categories[/]")
    nodes: dict[str, Tree] = {}
    for path, count in counts.items():
        parent, _, name = path.rpartition("/")
        nodes[path] = nodes.get(parent, tree).add(f"{escape(name)} [dim]{count:,}[/]")
    return tree
