"""Write files so that a crash or Ctrl-C never leaves a half-written one behind."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_problem_list(path: Path, problems: list[tuple[str, str]]) -> Path:
    """``path<TAB>reason`` per line: the list of files that were skipped and why."""
    return write_text_atomic(path, "".join(f"{file}\t{reason}\n" for file, reason in problems))
