"""Training checkpoints, written atomically, checksummed and read without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings and lists saved
with ``torch.save``; it is read back with ``weights_only=True``, which
refuses anything that could run code. Writing goes to a temporary file in
the same folder that is flushed to disk and then renamed over the old one,
so a crash, ``kill -9`` or a full disk mid-write leaves the previous
checkpoint intact. The dict carries the SHA-256 of every tensor in it
(``sha256``), checked on load: a file damaged after it was written (a bad
disk, a partial copy) is refused instead of resuming from wrong weights.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from imgclf.errors import ImgclfError, one_line
from imgclf.files import write_bytes_atomic

CHECKSUM_KEY = "sha256"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` (plus its checksum) atomically to ``path``.

    Serialised in memory first, so a failing write is the plain ``OSError``
    of :func:`write_bytes_atomic` rather than torch's wrapped one.
    """
    buffer = io.BytesIO()
    torch.save({**state, CHECKSUM_KEY: tensor_digest(state)}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling code and verify its checksum (checkpoints written before checksums existed have none)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImgclfError(f"no checkpoint at {path}; was this run started with imgclf train?") from None
    except Exception as error:  # torch raises several types for a damaged or unsafe file
        first_line = one_line(error)
        raise ImgclfError(f"{path} is not a readable imgclf checkpoint ({first_line})") from None
    if not isinstance(state, dict):
        raise ImgclfError(f"{path} is not an imgclf checkpoint (it holds a {type(state).__name__}, not a dict)")
    expected = state.pop(CHECKSUM_KEY, None)
    if expected is not None and expected != tensor_digest(state):
        raise ImgclfError(f"{path} is damaged (its weights do not match the checksum written with them); "
                          "delete it to restart the run from its previous state, or start a new run")
    return state


def tensor_digest(state: Any) -> str:
    """SHA-256 over every tensor in ``state`` (nested dicts and lists), with its place, dtype and shape."""
    digest = hashlib.sha256()
    for place, tensor in _tensors(state, ""):
        digest.update(f"{place}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tensors(value: Any, place: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield place, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{place}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{place}/{index}")
