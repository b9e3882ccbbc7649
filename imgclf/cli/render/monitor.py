"""How ``monitor`` shows its report: one row per window, alarms in red, and where the page is."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from imgclf.console import console

if TYPE_CHECKING:
    from imgclf.watch.monitor import MonitorReport

LAST_WINDOWS = 30  # rows printed; the JSON and the page have them all


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def print_monitor(report: MonitorReport, out: Path | None) -> None:
    """The latest windows as a table, then a line on the thresholds (or why there are none)."""
    windows = report.windows[-LAST_WINDOWS:]
    table = Table(title=f"{len(report.windows):,} window(s) of {report.window}"
                        + (f" (the last {len(windows)})" if len(windows) < len(report.windows) else ""))
    for name in ("start (UTC)", "requests", "below conf.", "novel", "MMD²", "threshold", "class p", "alarms"):
        table.add_column(name, justify="left" if name in ("start (UTC)", "alarms") else "right")
    for window in windows:
        start = datetime.fromtimestamp(window.start, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        alarms = ", ".join(window.alarms)
        table.add_row(start, f"{window.requests:,}", _share(window.low_confidence_share), _share(window.novelty_share),
                      "" if window.drift_mmd2 is None else f"{window.drift_mmd2:.4f}",
                      "" if window.drift_threshold is None else f"{window.drift_threshold:.4f}",
                      "" if window.class_p is None else f"{window.class_p:.3g}",
                      f"[red]{alarms}[/red]" if alarms else "none")
    console.print(table)
    facts = report.reference
    if facts is None:
        console.print("no monitoring reference in this model (retrain it to get drift and novelty tests)")
    else:
        measured = facts["drift_false_alarm_rate"]
        console.print(f"drift threshold: p <= {facts['drift_alpha']:g} in a permutation test per window (false alarms "
                      f"on val windows {'not measured' if measured is None else f'{measured:.1%}'}); novelty: "
                      f"{facts['novelty_score']} beyond {facts['novelty_threshold']:.4f}")
    if out is not None:
        console.print(f"wrote {out}")
