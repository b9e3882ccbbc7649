"""How the model folder commands show their results: the switch made, and the versions with their lineage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from imgclf.cli.render import TABLE_LIMIT
from imgclf.console import console

if TYPE_CHECKING:
    from imgclf.lifecycle.promotion import Promotion, VersionInfo

SHORT_LIST = 3  # the classes an update added to, named in the versions table; the others counted


def print_promotion(result: Promotion) -> None:
    """The version now current, the one it replaced, and how a server picks it up."""
    if not result.changed:
        console.print(f"{result.version} was already current in {result.folder}; nothing changed", soft_wrap=True)
        return
    was = f" (was {result.previous})" if result.previous else ""
    verb = "promoted" if result.action == "promote" else "rolled back to"
    console.print(f"{verb} {result.version} in {result.folder}{was}; a server of the folder switches within a "
                  f"second (imgclf serve {result.folder})", soft_wrap=True)


def print_versions(folder: Path, found: list[VersionInfo]) -> None:
    """One row a version, the most recently promoted first (the first TABLE_LIMIT; --json lists them all)."""
    table = Table(title=f"{folder}: {len(found)} version(s), promoted (UTC) most recent first", title_justify="left")
    for name in ("version", "current", "promoted", "from", "parent", "added", "gate"):
        table.add_column(name, no_wrap=name in ("version", "promoted", "parent"))
    for info in found[:TABLE_LIMIT]:
        lineage = info.lineage or {}
        promoted = (info.promoted_at or "")[:16].replace("T", " ")  # UTC, to the minute
        table.add_row(info.version, "yes" if info.current else "", promoted, escape(info.source or ""),
                      parent_id(lineage) or "", escape(added_text(lineage.get("added"))), gate_text(lineage.get("gate")))
    console.print(table)
    if len(found) > TABLE_LIMIT:
        console.print(f"and {len(found) - TABLE_LIMIT:,} older version(s): imgclf versions {folder} --json lists all",
                      soft_wrap=True)


def versions_json(found: list[VersionInfo]) -> list[dict[str, Any]]:
    return [{"version": info.version, "path": str(info.path), "current": info.current,
             "promoted_at": info.promoted_at, "source": info.source, "lineage": info.lineage} for info in found]


def parent_id(lineage: dict[str, Any]) -> str | None:
    parent = lineage.get("parent")
    return str(parent.get("id")) if isinstance(parent, dict) and parent.get("id") else None


def added_text(added: Any) -> str:
    """The data an update added, on one line: how many images, and the classes they went to (the first few)."""
    if not isinstance(added, dict):
        return ""
    parts = [f"{added['images']:,} images"] if isinstance(added.get("images"), int) else []
    classes = added.get("classes")
    names = ([f"{name} ({count:,})" for name, count in classes.items()] if isinstance(classes, dict) else
             [str(name) for name in classes] if isinstance(classes, list) else [])
    if names:
        more = f" and {len(names) - SHORT_LIST:,} more" if len(names) > SHORT_LIST else ""
        parts.append(", ".join(names[:SHORT_LIST]) + more)
    return ": ".join(parts)


def gate_text(gate: Any) -> str:
    """passed, failed (forced), with the largest drop allowed; empty for a model trained from scratch."""
    if not isinstance(gate, dict):
        return ""
    verdict = "passed" if gate.get("passed") else ("forced" if gate.get("forced") else "failed")
    drop = gate.get("max_drop")
    return f"{verdict} (max drop {drop:g})" if isinstance(drop, (int, float)) else verdict
