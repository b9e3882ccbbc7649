"""Training checkpoints, written atomically and read without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings and lists saved
with ``torch.save``; it is read back with ``weights_only=True``, which
refuses anything that could run code. Writing goes to a temporary file in
the same folder that is then renamed over the old one, so a crash or Ctrl-C
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgclf.errors import ImgclfError
from imgclf.files import atomic_path


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as partial:
        torch.save(state, partial)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImgclfError(f"no checkpoint at {path}; was this run started with imgclf train?") from None
    except Exception as error:  # torch raises several types for a damaged or unsafe file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImgclfError(f"{path} is not a readable imgclf checkpoint ({first_line})") from None
