"""Catalogue matching: a category for a new product from its photo and/or name, one, in batches, or evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.api.embedding import DEFAULT_EMBEDDING_MODEL
from imgclf.errors import ImgclfError

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.embeddings.match_batch import BatchSummary
    from imgclf.embeddings.match_evaluation import MatchEvaluation
    from imgclf.embeddings.suggest import CatalogMatcher, Suggestion


def catalog_matcher(catalog: str | Path, *, model: str | Path = DEFAULT_EMBEDDING_MODEL,
                    weights: str | Path | None = None, scoring: str = "auto", image_weight: float | None = None,
                    k: int | None = None, min_confidence: float = 0.5, matcher: str | Path | None = None,
                    device: str = "auto") -> CatalogMatcher:
    """The catalogue embedded and its scoring ready (the learned matcher fitted once, then loaded from ``matcher``)."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.match import Catalog
    from imgclf.embeddings.suggest import CatalogMatcher, check_options

    check_options(scoring, image_weight, min_confidence)  # mistakes are reported before the model loads
    items = Catalog.read(catalog)
    embedder = Embedder.load(model, weights=weights, device=device)
    return CatalogMatcher.build(Catalog.load(catalog, embedder, items), embedder, scoring=scoring,
                                image_weight=image_weight, k=k, min_confidence=min_confidence,
                                matcher_dir=Path(matcher) if matcher else None)


def match(catalog: str | Path, *, image: str | Path | None = None, name: str | None = None,
          model: str | Path = DEFAULT_EMBEDDING_MODEL, weights: str | Path | None = None, scoring: str = "auto",
          image_weight: float | None = None, k: int | None = None, min_confidence: float = 0.5,
          matcher: str | Path | None = None, device: str = "auto") -> Suggestion:
    """Suggest a category for a new product from its photo and/or name, with the closest catalogue items."""
    from imgclf.embeddings.match import Queries
    from imgclf.embeddings.similarity import normalise

    if image is None and not name:
        raise ImgclfError("give --image, --name or both to match against the catalogue")
    found = catalog_matcher(catalog, model=model, weights=weights, scoring=scoring, image_weight=image_weight, k=k,
                            min_confidence=min_confidence, matcher=matcher, device=device)
    vector = np.zeros((1, found.reference.vectors.shape[1]), dtype=np.float32)
    if image is not None:
        embedded = found.embedder.embed_files([Path(image)], description="Embedding the photo")
        if embedded.errors[0]:
            raise ImgclfError(f"--image {image}: {embedded.errors[0]}")
        vector = normalise(embedded.vectors[:1])
    suggestion = found.suggest(Queries(vector, [name or ""]))[0]
    suggestion.skipped = found.catalog.skipped
    return suggestion


def match_batch(catalog: str | Path, queries: str | Path, out: str | Path, *, batch_size: int = 512,
                model: str | Path = DEFAULT_EMBEDDING_MODEL, weights: str | Path | None = None, scoring: str = "auto",
                image_weight: float | None = None, k: int | None = None, min_confidence: float = 0.5,
                matcher: str | Path | None = None, device: str = "auto") -> BatchSummary:
    """Suggestions for every new product of ``queries`` (a CSV with image and/or name) written to ``out``."""
    from imgclf.embeddings.match_batch import match_batch as run_batch

    found = catalog_matcher(catalog, model=model, weights=weights, scoring=scoring, image_weight=image_weight, k=k,
                            min_confidence=min_confidence, matcher=matcher, device=device)
    return run_batch(found, Path(queries), Path(out), batch_size)


def evaluate_match(catalog: str | Path, *, model: str | Path = DEFAULT_EMBEDDING_MODEL,
                   weights: str | Path | None = None, k: int | None = None, seed: int = 0,
                   device: str = "auto") -> MatchEvaluation:
    """Hold out whole products; accuracy of image-only, name-only, blend and learned matching on them."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.match import DEFAULT_TOP_K, Catalog
    from imgclf.embeddings.match_evaluation import evaluate as evaluate_catalog

    items = Catalog.read(catalog)
    loaded = Catalog.load(catalog, Embedder.load(model, weights=weights, device=device), items)
    return evaluate_catalog(loaded, DEFAULT_TOP_K if k is None else k, seed)
