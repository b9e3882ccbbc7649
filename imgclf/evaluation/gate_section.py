"""The report's "Update gate" section: an updated run's per-class before/after table, read from its ``gate.json``.

``imgclf update`` (:mod:`imgclf.lifecycle.gate`) writes the file; the
report only shows it, so this reads plain JSON and never imports the layer
above.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from imgclf.evaluation.pages import percent, table

GATE_FILE = "gate.json"


def gate_section(run_dir: Path) -> tuple[str, str, str] | None:
    """(anchor, title, HTML) of the gate section, or None for a run that no update wrote."""
    try:
        gate = json.loads((run_dir / GATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(gate, dict) or not isinstance(gate.get("classes"), list):
        return None
    verdict = ("passed" if gate.get("passed") else
               f"failed for {', '.join(map(str, gate.get('failed', [])))}, kept with --force")
    intro = (f"<p>This run is an update. Its {html.escape(str(gate.get('metric', 'recall')))} on the previous "
             f"model's {html.escape(str(gate.get('split', '')))} images, class by class: the gate {verdict} "
             f"(an old class may lose at most {gate.get('max_drop')} points; classes with fewer than "
             f"{gate.get('min_support')} images are shown but not judged).</p>")
    rows = [[change.get("name"), change.get("support"), percent(change.get("before")), percent(change.get("after")),
             _change(change)] for change in gate["classes"] if isinstance(change, dict)]
    body = intro + table(["class", "images", "before", "after", "change"], rows)
    new = gate.get("new_classes") or {}
    if isinstance(new, dict) and new:
        body += "<p>New classes, on this run's held-out images:</p>" + table(
            ["class", "images", "score"], [[name, score.get("support"), percent(score.get("score"))]
                                           for name, score in new.items() if isinstance(score, dict)])
    return "update-gate", "Update gate", body


def _change(change: dict[str, Any]) -> str:
    drop = change.get("drop")
    text = f"{0.0 - drop:+.1f} points" if isinstance(drop, (int, float)) else ""
    if change.get("failed"):
        return f"{text} (dropped too far)"
    return text if change.get("judged") else f"{text} (too few to judge)"
