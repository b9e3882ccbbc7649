"""``imgclf embed`` as one rank of a torchrun job: this rank's share of the images, then rank 0 joins the parts.

Each rank embeds its pieces (:mod:`imgclf.deploy.parts`) through its
embedding store, as one process does, and writes each piece's vectors and
errors as a part (``.npz``, numbers and strings only, read without pickle).
Rank 0 joins them in input order into one :class:`FileEmbeddings` and puts
the vectors its own store lacks (ranks on other machines have their own
``$IMGCLF_HOME``) into it, so later commands on rank 0's machine find every
embedding there.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from imgclf.deploy.parts import file_fingerprints, job_digest, parts_folder, plan_parts, wait_for_parts
from imgclf.distributed import World
from imgclf.embeddings.embedder import Embedder, FileEmbeddings
from imgclf.embeddings.store import EmbeddingStore, image_key
from imgclf.files import atomic_path


def embed_in_parts(embedder: Embedder, paths: list[Path], out: Path | None, world: World) -> FileEmbeddings | None:
    """Embed this rank's share into parts; on rank 0, the embeddings of every path in order. None on other ranks."""
    started = time.perf_counter()
    job = {"kind": "embed", "model": embedder.identity, "inputs": file_fingerprints(paths)}
    parts = plan_parts(parts_folder(out, "embed", job_digest(job)), len(paths), world, ".npz")
    for piece in parts.mine:
        embedded = embedder.embed_files(paths[piece.start:piece.stop], description=f"Embedding (rank 0's share of "
                                        f"{world.size})", progress=world.is_main)
        with atomic_path(parts.path(piece)) as partial:
            np.savez(partial, vectors=embedded.vectors.astype(np.float16), errors=np.array(embedded.errors, dtype=str),
                     counts=np.array([embedded.reused, embedded.computed]))
    wait_for_parts(parts, world)
    if not world.is_main:
        return None
    vectors, errors, reused, computed = [], [], 0, 0
    for part in parts.all_paths():
        with np.load(part, allow_pickle=False) as stored:
            vectors.append(stored["vectors"].astype(np.float32))
            errors += [str(error) for error in stored["errors"]]
            reused, computed = reused + int(stored["counts"][0]), computed + int(stored["counts"][1])
    joined = FileEmbeddings(paths, np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32),
                            errors, reused, computed, time.perf_counter() - started)
    _fill_store(EmbeddingStore(embedder.identity), joined)
    parts.remove()
    return joined


def _fill_store(store: EmbeddingStore, embedded: FileEmbeddings) -> None:
    """Put the embeddings this machine's store lacks (computed by ranks on other machines) into it."""
    keys = [image_key(path) if not error else None for path, error in zip(embedded.paths, embedded.errors)]
    _, found = store.get(keys)
    missing = [index for index, key in enumerate(keys) if key is not None and not found[index]]
    if missing:
        store.put([keys[index] for index in missing], embedded.vectors[missing])  # type: ignore[misc]  # missing: keys that are not None
