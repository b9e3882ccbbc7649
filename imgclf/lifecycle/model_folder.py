"""A model folder: the versions of one model that a server may answer with, and which one is current.

::

    models/shop/
      versions/<content id>/   a copy of each promoted bundle, named by its content id
      current.json             the pointer: the current version, the promoted ones (for rollback), the events

A version folder is written beside its final name and renamed in
(:func:`imgclf.files.write_folder_atomic`) before the pointer names it, and
the pointer is replaced in one ``os.replace``: a promotion killed at any
moment leaves the old pointer or the new one, and every version a pointer
names is complete. Changes to the pointer hold an exclusive lock on
``.lock`` so two promotions at once do not lose one another's history.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf.deploy.bundle import MODEL_FILE
from imgclf.deploy.metadata import bundle_content_id
from imgclf.errors import ImgclfError
from imgclf.files import remove_stale_partials, write_folder_atomic, write_text_atomic

POINTER = "current.json"
VERSIONS = "versions"
LOCK = ".lock"


@dataclass(frozen=True)
class Pointer:
    """What ``current.json`` holds: the version served, the promoted ones (current last: rollback pops), the events."""

    current: str
    stack: tuple[str, ...]
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps({"current": self.current, "stack": list(self.stack), "history": list(self.history)},
                          indent=1) + "\n"


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a model folder (it holds the pointer), as opposed to a run or a bundle."""
    return (Path(path) / POINTER).is_file()


class ModelFolder:
    """One model folder on disk; every read goes to the disk, so other processes' promotions are seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pointer_file = path / POINTER

    @classmethod
    def open(cls, path: str | Path) -> ModelFolder:
        """An existing model folder; anything else is refused in one line."""
        path = Path(path)
        if not path.exists():
            raise ImgclfError(f"{path}: no such model folder; create one with imgclf promote RUN --to {path}")
        if not is_model_folder(path):
            raise ImgclfError(f"{path} is not a model folder (no {POINTER}); give the folder that imgclf promote "
                              f"--to wrote, e.g. models/shop")
        return cls(path)

    @classmethod
    def open_or_create(cls, path: str | Path) -> ModelFolder:
        """The model folder to promote into: an existing one, or a new or empty folder (or one whose first promotion
        was killed before its pointer was written)."""
        path = Path(path)
        if is_model_folder(path):
            return cls(path)
        if path.exists() and (not path.is_dir() or set(os.listdir(path)) - {VERSIONS, LOCK}):
            raise ImgclfError(f"--to {path} is not a model folder (no {POINTER}) and is not empty; give a new folder "
                              f"(e.g. models/{path.name}) or one that imgclf promote wrote")
        (path / VERSIONS).mkdir(parents=True, exist_ok=True)
        return cls(path)

    def pointer(self) -> Pointer | None:
        """The pointer as it is on disk now; None before the first promotion."""
        try:
            values = json.loads(self.pointer_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise ImgclfError(f"{self.pointer_file} cannot be read as a model folder's pointer ({error}); restore it "
                              f"from a backup or promote again into a new folder") from None
        if not isinstance(values, dict) or not isinstance(values.get("current"), str):
            raise ImgclfError(f"{self.pointer_file} is not a model folder's pointer (no current version); restore it "
                              f"from a backup or promote again into a new folder")
        stack = tuple(str(item) for item in values.get("stack") or [values["current"]])
        history = tuple(item for item in values.get("history") or [] if isinstance(item, dict))
        return Pointer(values["current"], stack, history)

    def current(self) -> Pointer:
        """The pointer, which must exist (a folder whose first promotion was killed has none)."""
        pointer = self.pointer()
        if pointer is None:
            raise ImgclfError(f"{self.path} has no current version yet; promote one: imgclf promote RUN --to {self.path}")
        return pointer

    def stamp(self) -> tuple[int, int, int] | None:
        """The pointer file's inode, mtime and size: changes with every switch (os.replace makes a new file)."""
        try:
            status = os.stat(self.pointer_file)
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def version_dir(self, version: str) -> Path:
        return self.path / VERSIONS / version

    def versions(self) -> list[str]:
        """The complete versions on disk (partial copies left by a killed promotion have a dotted name)."""
        folder = self.path / VERSIONS
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        return [name for name in names if not name.startswith(".") and (folder / name / MODEL_FILE).is_file()]

    def resolve(self, version: str) -> str:
        """The version named by ``version`` or a unique prefix of it; one line naming the versions otherwise."""
        found = [name for name in self.versions() if name.startswith(version)] if version else []
        if len(found) == 1:
            return found[0]
        known = ", ".join(self.versions()) or "none"
        what = "is ambiguous" if found else "does not exist"
        raise ImgclfError(f"version {version!r} {what} in {self.path}; its versions: {known} (imgclf versions {self.path})")

    def add_version(self, bundle: Path) -> str:
        """Copy the bundle in as ``versions/<content id>`` (kept if already there and whole); its id."""
        version = bundle_content_id(bundle)
        target = self.version_dir(version)
        with self.locked():
            remove_stale_partials(target)
            if not (target / MODEL_FILE).is_file() or bundle_content_id(target) != version:
                write_folder_atomic(target, lambda partial: shutil.copytree(bundle, partial, dirs_exist_ok=True))
        return version

    def switch(self, version: str, action: str, **details: Any) -> tuple[Pointer | None, Pointer]:
        """Make ``version`` current (push, or for a rollback pop to it); (the pointer before, the pointer after)."""
        with self.locked():
            before = self.pointer()
            stack = list(before.stack) if before else []
            if action == "rollback" and version in stack:
                del stack[len(stack) - stack[::-1].index(version):]
            elif not stack or stack[-1] != version:
                stack.append(version)
            event = {"action": action, "version": version, "previous": before.current if before else None,
                     "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
            after = Pointer(version, tuple(stack), (*(before.history if before else ()), event))
            write_text_atomic(self.pointer_file, after.to_json())
        return before, after

    @contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the folder for the length of the block (released by the OS if the process dies)."""
        with open(self.path / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
