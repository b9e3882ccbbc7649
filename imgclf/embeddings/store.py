"""Embeddings computed once per (model, weights, preprocessing, image) and kept on disk.

The backbone's forward pass is the whole cost of a probe, a similarity
search or a near-duplicate scan, and its answer for an unchanged image never
changes. So every embedding is stored, keyed by the model's identity (a
folder per architecture + weights + input size + resize policy +
normalisation + precision) and by the image (path, size and modification
time, so an edited file is embedded again):

```
$IMGCLF_HOME/cache/embeddings/<model key>/
  model.json            what the key stands for, and the embedding width
  chunk-<id>.keys       the image keys of one chunk, one per line
  chunk-<id>.npy        float16 (N, D) vectors, memory-mapped on read
```

Each call that computes new vectors adds one chunk (keys first, vectors
renamed into place last, so a chunk without its ``.npy`` is incomplete and
ignored); many small chunks are merged into one now and then. float16 keeps
a 1280-wide embedding at 2.5 KB an image; a probe fitted on it matches one
fitted on float32 (it is standardised first).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import paths
from imgclf.files import atomic_path, write_bytes_atomic

STORE_VERSION = 1
MERGE_AFTER_CHUNKS = 16


def image_key(path: Path) -> str | None:
    """Identity of an image file's current contents: resolved path, size and mtime; None if it cannot be read."""
    try:
        stat = path.stat()
        resolved = paths.real_path(path)
    except OSError:
        return None
    # fsencode: the name's own bytes (the same as UTF-8 for UTF-8 names), so names that are not UTF-8 work too
    identity = os.fsencode(resolved) + f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    return hashlib.blake2b(identity, digest_size=16).hexdigest()


def model_key(identity: dict[str, Any]) -> str:
    """The folder name for a model identity (any JSON-able description of model, weights and preprocessing)."""
    text = json.dumps({"store": STORE_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class EmbeddingStore:
    """The on-disk embeddings of one model identity."""

    def __init__(self, identity: dict[str, Any], root: Path | None = None) -> None:
        self.identity = identity
        self.directory = (root or paths.cache_dir() / "embeddings") / model_key(identity)
        self._rows: dict[str, tuple[str, int]] | None = None  # image key -> (chunk id, row)

    # ----------------------------------------------------------------- read
    def _chunks(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(path.stem for path in self.directory.glob("chunk-*.npy")
                      if path.with_suffix(".keys").exists())

    def _index(self) -> dict[str, tuple[str, int]]:
        if self._rows is None:
            self._rows = {}
            for chunk in self._chunks():
                try:
                    keys = (self.directory / f"{chunk}.keys").read_text().split()
                except FileNotFoundError:  # merged away by another process since it was listed
                    continue
                self._rows.update({key: (chunk, row) for row, key in enumerate(keys)})
        return self._rows

    def __len__(self) -> int:
        return len(self._index())

    def get(self, keys: Sequence[str | None], dtype: type = np.float32) -> tuple[np.ndarray | None, np.ndarray]:
        """(vectors with zero rows where missing, found mask) for ``keys``; vectors None if none found.

        ``dtype`` float16 returns the stored numbers without widening them, for
        vectors so wide (the tail's activations) that float32 copies would double their memory.
        """
        index = self._index()
        found = np.array([key is not None and key in index for key in keys], dtype=bool)
        if not found.any():
            return None, found
        by_chunk: dict[str, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            if found[position]:
                chunk, row = index[key]  # type: ignore[index]  # found: the key is not None
                by_chunk.setdefault(chunk, []).append((position, row))
        vectors: np.ndarray | None = None
        for chunk, pairs in by_chunk.items():
            try:
                stored = np.load(self.directory / f"{chunk}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):  # removed or damaged since indexing: treat its rows as missing
                for position, _ in pairs:
                    found[position] = False
                continue
            if vectors is None:
                vectors = np.zeros((len(keys), stored.shape[1]), dtype=dtype)
            positions, rows = (np.array(column) for column in zip(*pairs))
            vectors[positions] = stored[np.sort(rows)][np.argsort(np.argsort(rows))]
        return (vectors if found.any() else None), found

    # ----------------------------------------------------------------- write
    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` (N, D) for ``keys`` as one new chunk, atomically."""
        if not len(keys):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        description = self.directory / "model.json"
        if not description.exists():
            write_bytes_atomic(description, json.dumps({**self.identity, "dim": int(vectors.shape[1])}, indent=2,
                                                  default=str).encode())
        chunk = f"chunk-{uuid.uuid4().hex[:16]}"
        write_bytes_atomic(self.directory / f"{chunk}.keys", "\n".join(keys).encode())
        with atomic_path(self.directory / f"{chunk}.npy") as partial:
            np.save(partial, np.asarray(vectors, dtype=np.float16), allow_pickle=False)
        self._rows = None
        if len(self._chunks()) > MERGE_AFTER_CHUNKS:
            self._merge()

    def _merge(self) -> None:
        """Rewrite all chunks as one, so a lookup opens one file; the old chunks go after the new one exists."""
        chunks = self._chunks()
        index = self._index()
        keys = list(index)
        vectors, found = self.get(keys)
        if vectors is None:
            return
        # a chunk another process (a rank of the same job) merged away meanwhile: keep only rows that were read
        keys, vectors = [key for key, hit in zip(keys, found) if hit], vectors[found]
        merged = f"chunk-{uuid.uuid4().hex[:16]}"
        write_bytes_atomic(self.directory / f"{merged}.keys", "\n".join(keys).encode())
        with atomic_path(self.directory / f"{merged}.npy") as partial:
            np.save(partial, vectors.astype(np.float16), allow_pickle=False)
        for chunk in chunks:
            (self.directory / f"{chunk}.npy").unlink(missing_ok=True)
            (self.directory / f"{chunk}.keys").unlink(missing_ok=True)
        self._rows = None

