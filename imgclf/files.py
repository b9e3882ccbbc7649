"""Write files so that a crash or Ctrl-C never leaves a half-written one behind.

Everything goes through :func:`atomic_path`: write (and check) at a
temporary name beside the target, then rename over it. Two writers keep
their own rename because they need more than that: the decode cache
(another process may finish the same entry first) and the CIFAR download
and extraction (checked against an md5, a permission-preserving folder).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file or a folder at; it replaces ``path`` when the block ends.

    An error (or Ctrl-C) inside the block removes it and leaves ``path`` as it
    was, so a block can also refuse what it wrote (a failed parity check).
    The temporary name keeps ``path``'s suffix, for writers that add one
    (``np.save``, ``np.savez``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    _remove(partial)
    try:
        yield partial
        if partial.is_dir():
            replace_folder(partial, path)
        else:
            os.replace(partial, path)
    finally:
        _remove(partial)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, as :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_folder_atomic(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write a temporary folder beside ``directory``, then swap it in.

    A half-written folder (a crash, Ctrl-C, an error in ``fill``) never
    replaces a good one: bundles, indexes and exports are written this way.
    """
    with atomic_path(directory) as partial:
        partial.mkdir()
        fill(partial)
    return directory


def replace_folder(partial: Path, directory: Path) -> Path:
    """Rename the complete folder ``partial`` to ``directory``; the old one is moved aside until then."""
    previous = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, previous)
    os.replace(partial, directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_problem_list(path: Path, problems: list[tuple[str, str]]) -> Path:
    """``path<TAB>reason`` per line: the list of files that were skipped and why."""
    return write_text_atomic(path, "".join(f"{file}\t{reason}\n" for file, reason in problems))
