"""The corrections CSV as the review page reads and changes it: ``path,action,label,reason,time``.

TODO(merge): the quality branch's ``imgclf.data.corrections`` owns this
format (its reading, validation and applying to samples); once it lands these
three functions become thin calls to it. Until then they keep its contract:
one row per path, changed under an exclusive lock (a ``.lock`` file beside it,
so two processes serialise too) by re-reading the file and replacing it
atomically, so a change never loses another writer's rows and a crash never
leaves half a file.
"""

from __future__ import annotations

import csv
import fcntl
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from imgclf.errors import ImgclfError
from imgclf.files import write_text_atomic

COLUMNS = ("path", "action", "label", "reason", "time")
ACTIONS = ("keep", "exclude", "relabel", "rename")
_THREADS = threading.Lock()  # flock serialises processes; this, the threads of one server


def read_corrections(path: Path) -> dict[str, dict[str, str]]:
    """The rows by path (the last row wins); an empty table when the file does not exist yet."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ("path", "action") if column not in (reader.fieldnames or [])]
        if missing:
            raise ImgclfError(f"{path}: not a corrections file (no {', '.join(missing)} column); its header must be "
                              f"{','.join(COLUMNS)}")
        rows = {}
        for line, row in enumerate(reader, start=2):
            if row["action"] not in ACTIONS:
                raise ImgclfError(f"{path} line {line}: unknown action {row['action']!r}; use one of "
                                  f"{', '.join(ACTIONS)}")
            rows[row["path"]] = {column: row.get(column) or "" for column in COLUMNS}
    return rows


def change_corrections(path: Path, changes: dict[str, dict[str, str] | None]) -> None:
    """Upsert (a row) or remove (``None``) each path's correction, in one locked read-modify-replace."""
    with _locked(path):
        rows = read_corrections(path)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, row in changes.items():
            if row is None:
                rows.pop(key, None)
            else:
                rows[key] = {**dict.fromkeys(COLUMNS, ""), **row, "path": key, "time": row.get("time") or stamp}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows.values())
        write_text_atomic(path, buffer.getvalue())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREADS, open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
