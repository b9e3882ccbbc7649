"""Model folders: promote a trained bundle to be the version a server answers with, roll back, list the versions."""

from __future__ import annotations

from imgclf.lifecycle.promotion import Promotion, VersionInfo, promote, rollback, versions

__all__ = ["Promotion", "VersionInfo", "promote", "rollback", "versions"]
