"""Write files so that a crash, ``kill -9``, Ctrl-C or a full disk never leaves a half-written one behind.

Everything goes through :func:`atomic_path`: write (and check) at a
temporary name beside the target, flush it to disk, then rename over it (a
rename within one folder is atomic), so a reader sees the old file or the
new one, never a mix. What a killed writer left behind is cleared first; a
write that fails for lack of space is turned into one clear line by
:func:`disk_error`. Two writers keep their own rename because they need
more than that: the decode cache (another process may finish the same entry
first) and the CIFAR download and extraction (checked against an md5, a
permission-preserving folder).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from imgclf.errors import ImgclfError

# File names are bytes on POSIX; Python carries the ones that are not UTF-8 as lone surrogates. Lists and
# tables of paths write (and read) them back as those same bytes, as ls and find print them.
PATH_BYTES = "surrogateescape"
# what a full disk, a quota, a file size limit (RLIMIT_FSIZE) or a read-only mount look like
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file or a folder at; it replaces ``path`` when the block ends.

    An error (or Ctrl-C) inside the block removes it and leaves ``path`` as it
    was, so a block can also refuse what it wrote (a failed parity check).
    The temporary name keeps ``path``'s suffix, for writers that add one
    (``np.save``, ``np.savez``). An OS error names ``path``, not the
    temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    _remove(partial)
    try:
        yield partial
        if partial.is_dir():
            replace_folder(partial, path)
        else:
            _flush_to_disk(partial)  # the rename must not reach the disk before the data
            os.replace(partial, path)
    except OSError as error:
        raise _naming(error, path) from None
    finally:
        _remove(partial)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, as :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8", errors=PATH_BYTES))


def write_folder_atomic(directory: Path, fill: Callable[[Path], object]) -> Path:
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


def _flush_to_disk(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_problem_list(path: Path, problems: list[tuple[str, str]]) -> Path:
    """``path<TAB>reason`` per line: the list of files that were skipped and why."""
    return write_text_atomic(path, "".join(f"{file}\t{reason}\n" for file, reason in problems))


def remove_stale_partials(path: Path) -> None:
    """Delete what writes of ``path`` by processes that no longer run left behind (``kill -9``, power loss).

    Temporary names carry the writer's process id, so the partial files of a
    write still in progress elsewhere are left alone. A writer killed between
    moving the old folder aside and renaming the new one in leaves no
    ``path`` at all: the old one is then put back first.
    """
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        return
    for name in names:
        stem = name[: -len(path.suffix)] if path.suffix and name.endswith(path.suffix) else name  # atomic_path's
        prefix, _, pid = stem.rpartition("-")
        if prefix in (f".{path.name}.tmp", f".{path.name}.old") and pid.isdigit() and not _running(int(pid)):
            stale = path.parent / name
            if prefix.endswith(".old") and not os.path.lexists(path):
                os.replace(stale, path)
            elif stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _naming(error: OSError, target: Path) -> OSError:
    """``error`` with the file the user asked for as its file name (a failed write() names none)."""
    if error.filename is None or ".tmp-" in str(error.filename):
        error.filename = str(target)
    return error


def disk_error(error: OSError) -> ImgclfError | None:
    """A one-line error for a write that failed for lack of space (None for other OS errors)."""
    if error.errno not in DISK_ERRNOS:
        return None
    where = f" {error.filename}" if error.filename else ""
    return ImgclfError(f"cannot write{where} ({error.strerror}): the disk is full, a quota or file size limit was "
                       "reached, or it is read-only; files written before are intact (nothing half-written was "
                       "kept): free space or choose another --out, then run the command again")
