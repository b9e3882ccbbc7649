"""Where imgclf keeps what it can rebuild: decoded-image caches and datasets.

One root, ``$IMGCLF_HOME`` or ``~/.cache/imgclf``, so a user can move or wipe
it in one place; user data folders are never written to (they may be
read-only, as shared datasets often are).
"""

from __future__ import annotations

import os
from pathlib import Path


def imgclf_home() -> Path:
    """The root folder for caches and downloaded datasets."""
    env = os.environ.get("IMGCLF_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imgclf"


def cache_dir() -> Path:
    """Folder of decoded-image caches (``$IMGCLF_HOME/cache``)."""
    return imgclf_home() / "cache"


def datasets_dir() -> Path:
    """Folder of downloaded and extracted datasets (``$IMGCLF_HOME/datasets``)."""
    return imgclf_home() / "datasets"


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute with its symlinks resolved as far as they go; never raises.

    ``Path.resolve()`` raises ``RuntimeError`` on a symlink loop, and a user's
    image folder may hold one: such a file must be reported as unreadable by
    the decoder, not kill the run while its path is being written down.
    """
    return Path(os.path.realpath(path))


def absolute_path(path: str | os.PathLike[str]) -> str:
    """``path`` absolute and normalised, symlinks kept; never raises (a symlink loop is the decoder's to report).

    This is how lists, manifests and reports name a file: as the user's
    folder has it, so a problem is reported under the name the user knows.
    """
    return os.path.abspath(path)
