"""Embeddings of images: vectors, the similarity of two images, a search index and its queries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.api.prediction import check_distributable
from imgclf.errors import ImgclfError
from imgclf.files import atomic_path, write_problem_list

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.embeddings.embedder import FileEmbeddings
    from imgclf.embeddings.index import Neighbour, SimilarityIndex


DEFAULT_EMBEDDING_MODEL = "tf_efficientnet_lite0"  # ImageNet weights installed with imgclf: works offline


def embed(model: str | Path, inputs: str | Path | Sequence[str | Path], *, weights: str | Path | None = None,
          out: str | Path | None = None, image_size: int | None = None, batch_size: int = 64,
          device: str = "auto") -> FileEmbeddings | None:
    """Embeddings of images (files, folders, globs, @lists, or a CSV with an ``image`` column), cached per image.

    ``model`` is a registry backbone with pretrained weights (``imgclf models
    --pretrained``) or a trained model; ``out`` (``.npz``) also saves paths,
    vectors and errors for use outside imgclf. ``image_size`` applies to a
    backbone (default 224, as ``train`` uses it); a trained model keeps its own.

    Under torchrun each rank embeds its share of the inputs into parts
    (resumable) and rank 0 returns (and saves) them all in input order; the
    other ranks return None.
    """
    from imgclf import distributed
    from imgclf.embeddings.embed_parts import embed_in_parts
    from imgclf.embeddings.embedder import Embedder

    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    if out is not None and Path(out).suffix.lower() != ".npz":
        raise ImgclfError(f"--out {out}: embeddings are saved as .npz (arrays paths, vectors, errors); "
                          "give a file name ending in .npz")
    world = distributed.current_world()
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if world.is_distributed:
        check_distributable(None, entries)
    embedder = Embedder.load(model, weights=weights, device=distributed.rank_device(device, world),
                             image_size=image_size)
    embedder.batch_size = batch_size
    if world.is_distributed:
        distributed.start(embedder.device)
        try:
            embedded = embed_in_parts(embedder, _image_inputs(entries), Path(out) if out else None, world)
        finally:
            distributed.stop()
    else:
        embedded = embedder.embed_files(_image_inputs(entries))
    if out is not None and embedded is not None:
        _save_embeddings(embedded, Path(out))
    return embedded


def _image_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files, folders, globs and @lists as ``predict`` takes them; a lone ``.csv`` is read for its image column."""
    from imgclf.deploy.predict import expand_inputs
    from imgclf.embeddings.tables import IMAGE_COLUMN, read_items

    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if len(entries) == 1 and str(entries[0]).lower().endswith(".csv"):
        return [Path(item[IMAGE_COLUMN]) for item in read_items(entries[0])]
    return expand_inputs(entries)


def _save_embeddings(embedded: FileEmbeddings, path: Path) -> None:
    with atomic_path(path) as partial:
        np.savez(partial, paths=np.array([str(p) for p in embedded.paths]), vectors=embedded.vectors,
                 errors=np.array(embedded.errors))


def similar(model: str | Path, image_a: str | Path, image_b: str | Path, *, weights: str | Path | None = None,
            device: str = "auto") -> float:
    """Similarity of two images in [0, 1] (cosine of their embeddings); see ``imgclf.embeddings.similarity``."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.similarity import similarity

    embedded = Embedder.load(model, weights=weights, device=device).embed_files([Path(image_a), Path(image_b)],
                                                                               description="Embedding")
    for path, error in zip(embedded.paths, embedded.errors):
        if error:
            raise ImgclfError(f"{path}: {error}")
    return similarity(embedded.vectors[0], embedded.vectors[1])


def build_index(model: str | Path, source: str | Path, out: str | Path, *, weights: str | Path | None = None,
                device: str = "auto") -> tuple[SimilarityIndex, list[tuple[str, str]]]:
    """Embed every image of ``source`` (a folder, or a CSV with an ``image`` column) into a search index at ``out``.

    Returns the index and the (path, reason) of images that could not be read (also listed in ``out``).
    """
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.index import SimilarityIndex
    from imgclf.embeddings.tables import read_items

    items = read_items(source)
    index, skipped = SimilarityIndex.build(Embedder.load(model, weights=weights, device=device), items,
                                           str(weights) if weights else None)
    index.save(Path(out))
    if skipped:
        write_problem_list(Path(out) / "skipped_files.txt", skipped)
    return index, skipped


def query_index(index: str | Path, images: str | Path | Sequence[str | Path], *, k: int = 5, device: str = "auto"
                ) -> list[tuple[Path, list[Neighbour], str]]:
    """The ``k`` most similar indexed items of each image: (image, neighbours best first, error or "")."""
    from imgclf.embeddings.index import SimilarityIndex

    if k < 1:
        raise ImgclfError(f"-k must be at least 1, got {k}")
    loaded = SimilarityIndex.load(index)
    embedded = loaded.embedder(device=device).embed_files(_image_inputs(images), description="Embedding queries")
    found = loaded.search(embedded.vectors, k)
    return [(path, hits if not error else [], error)
            for path, hits, error in zip(embedded.paths, found, embedded.errors)]
