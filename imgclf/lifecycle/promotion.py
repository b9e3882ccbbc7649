"""Promote a bundle into a model folder, roll back, and list the versions with their lineage.

Promotion refuses a bundle whose regression gate failed unless the update
that wrote it was forced (``imgclf update --force`` records that); a bundle
trained by ``train`` has no gate and is promotable. The copy goes in before
the pointer moves, so a server watching the folder never sees a pointer to
a half-copied version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.deploy.bundle import find_bundle
from imgclf.errors import ImgclfError
from imgclf.lifecycle.lineage import LINEAGE_FILE, read_lineage
from imgclf.lifecycle.model_folder import ModelFolder, Pointer


@dataclass(frozen=True)
class Promotion:
    """What a promotion or rollback did: the folder, the version now current, the one before (None at first)."""

    folder: Path
    version: str
    previous: str | None
    action: str

    @property
    def changed(self) -> bool:
        return self.version != self.previous


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model folder: whether it is current, when it was last promoted and from where, its lineage."""

    version: str
    path: Path
    current: bool
    promoted_at: str | None
    source: str | None
    lineage: dict[str, Any] | None


def check_gate(bundle: Path, lineage: dict[str, Any] | None) -> None:
    """Refuse, in one line naming the classes, a bundle whose regression gate failed and was not forced."""
    gate = (lineage or {}).get("gate")
    if not isinstance(gate, dict) or gate.get("passed") is not False or gate.get("forced"):
        return
    classes = ", ".join(str(name) for name in gate.get("classes") or []) or "see its report"
    drop = gate.get("max_drop")
    limit = f" by more than {drop:g} points" if isinstance(drop, (int, float)) else ""
    raise ImgclfError(f"{bundle} failed its regression gate (classes that dropped{limit}: {classes}) and was not "
                      f"forced, so it is not promoted; add photos of those classes and update again, or accept the "
                      f"drop with imgclf update ... --force")


def promote(model: str | Path, to: str | Path) -> Promotion:
    """Copy the bundle of ``model`` (a run or bundle) into the model folder ``to`` and make it current."""
    bundle = find_bundle(model)
    lineage = read_lineage(bundle)
    if lineage is None and (bundle / LINEAGE_FILE).is_file():  # a gate that cannot be read is not a passed one
        raise ImgclfError(f"{bundle / LINEAGE_FILE} cannot be read, so its regression gate cannot be checked; write "
                          f"the bundle again with imgclf update")
    check_gate(bundle, lineage)
    folder = ModelFolder.open_or_create(to)
    version = folder.add_version(bundle)
    before, _ = folder.switch(version, "promote", source=str(model))
    return Promotion(folder.path, version, before.current if before else None, "promote")


def rollback(folder_path: str | Path, to: str | None = None) -> Promotion:
    """Make the version promoted before the current one current again (or the version ``to``, an id or prefix)."""
    folder = ModelFolder.open(folder_path)
    pointer = folder.current()
    if to is not None:
        version = folder.resolve(to)
    elif len(pointer.stack) < 2:
        raise ImgclfError(f"{folder.path} has no previous version to roll back to ({pointer.current} is the only one "
                          f"promoted); promote another with imgclf promote RUN --to {folder.path}")
    else:
        version = pointer.stack[-2]
    if not folder.version_dir(version).is_dir():
        raise ImgclfError(f"version {version} of {folder.path} is missing from {folder.path / 'versions'}; roll back "
                          f"to one of its versions with --to (imgclf versions {folder.path})")
    folder.switch(version, "rollback")
    return Promotion(folder.path, version, pointer.current, "rollback")


def versions(folder_path: str | Path) -> list[VersionInfo]:
    """The folder's versions, the most recently promoted first, each with its lineage."""
    folder = ModelFolder.open(folder_path)
    pointer = folder.current()
    last = _last_promotions(pointer)
    order = sorted(folder.versions(), key=lambda name: list(last).index(name) if name in last else -1, reverse=True)
    return [VersionInfo(name, folder.version_dir(name), name == pointer.current, last.get(name, {}).get("at"),
                        last.get(name, {}).get("source"), read_lineage(folder.version_dir(name))) for name in order]


def _last_promotions(pointer: Pointer) -> dict[str, dict[str, Any]]:
    """Each version's last ``promote`` event (when and from where it came in), in the order of those events."""
    last: dict[str, dict[str, Any]] = {}
    for event in pointer.history:
        if event.get("action") == "promote" and isinstance(event.get("version"), str):
            last.pop(event["version"], None)
            last[event["version"]] = event
    return last
