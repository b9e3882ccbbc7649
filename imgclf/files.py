"""Write files so that a crash or Ctrl-C never leaves a half-written one behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, as :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_folder_atomic(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write a temporary folder beside ``directory``, then swap it in.

    A half-written folder (a crash, Ctrl-C, an error in ``fill``) never
    replaces a good one: bundles, indexes and exports are written this way.
    """
    partial = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        fill(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return replace_folder(partial, directory)


def replace_folder(partial: Path, directory: Path) -> Path:
    """Rename the complete folder ``partial`` to ``directory``; the old one is moved aside until then."""
    previous = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, previous)
    os.replace(partial, directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


def write_problem_list(path: Path, problems: list[tuple[str, str]]) -> Path:
    """``path<TAB>reason`` per line: the list of files that were skipped and why."""
    return write_text_atomic(path, "".join(f"{file}\t{reason}\n" for file, reason in problems))
