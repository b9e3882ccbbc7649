"""Where a bundle came from: ``<bundle>/lineage.json``, written by ``imgclf update``.

```
{"id": "<the bundle's content id>",
 "parent": {"id": "<the parent bundle's content id>", "path": "<its folder>"},
 "added": {"images": N, "classes": {"name": count}, "manifest": "added_data.csv", "sha256": "<of that file>"},
 "gate": {"passed": bool, "forced": bool, "max_drop": points, "classes": ["<classes that failed it>"]}}
```

A file beside ``model.json`` rather than a field in it: ``model.json`` is
part of the content id, and the lineage names that id. A bundle that
``imgclf train`` wrote has no lineage (it has no parent).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from imgclf.deploy.metadata import bundle_content_id
from imgclf.errors import one_line
from imgclf.files import write_text_atomic

log = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.json"


def write_lineage(bundle_dir: Path, parent_dir: Path, added: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """Record ``bundle_dir``'s parent, the data it added and the gate's verdict; the record."""
    lineage = {"id": bundle_content_id(bundle_dir),
               "parent": {"id": bundle_content_id(parent_dir), "path": str(parent_dir.resolve())},
               "added": added,
               "gate": {"passed": gate["passed"], "forced": gate["forced"], "max_drop": gate["max_drop"],
                        "classes": gate["failed"]}}
    write_text_atomic(bundle_dir / LINEAGE_FILE, json.dumps(lineage, indent=2))
    return lineage


def read_lineage(bundle_dir: str | Path) -> dict[str, Any] | None:
    """The bundle's lineage, or None when it has none (trained, not updated) or it cannot be read (said once)."""
    path = Path(bundle_dir) / LINEAGE_FILE
    if not path.is_file():
        return None
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning(f"{path} cannot be read ({one_line(error)}); its lineage is not shown")
        return None
    if not isinstance(lineage, dict) or not isinstance(lineage.get("parent"), dict):
        log.warning(f"{path} is not a lineage record (no parent); its lineage is not shown")
        return None
    return lineage
