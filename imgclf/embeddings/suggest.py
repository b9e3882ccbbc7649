"""Suggest categories for new products: the chosen scoring, the category tree's back-off, and the evidence shown.

:class:`CatalogMatcher` is what ``imgclf match`` (one product or a batch)
and the review page use: the whole catalogue as the reference, the learned
matcher (fitted once, then loaded from its folder) or the fixed blend, and
per product a :class:`Suggestion` with the top categories, one suggestion
per level of a category path, the closest catalogue items and the numbers
behind the choice.

``scoring="auto"`` uses the learned matcher when the catalogue is big
enough to learn from (:func:`imgclf.embeddings.matcher.can_learn`: at least
30 products, two categories with two or more), else the fixed blend; giving
an image weight asks for the blend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data.hierarchy import Hierarchy, LevelSuggestion
from imgclf.embeddings.embedder import Embedder
from imgclf.embeddings.match import (
    DEFAULT_IMAGE_WEIGHT,
    DEFAULT_TOP_K,
    QUERY_CHUNK,
    Catalog,
    ItemScores,
    Queries,
    Reference,
    check_weight,
)
from imgclf.embeddings.matcher import LearnedMatcher, can_learn
from imgclf.errors import ImgclfError
from imgclf.paths import cache_dir

log = logging.getLogger(__name__)


SCORINGS = ("auto", "learned", "blend")
DEFAULT_MIN_CONFIDENCE = 0.5
RANKED = 3  # categories listed per product


@dataclass
class Scored:
    """One catalogue item scored against a query."""

    item: dict[str, str]
    image_score: float
    name_score: float
    score: float


@dataclass
class Suggestion:
    """The category for one new product, how sure, and why."""

    category: str  # the deepest level at least min_confidence sure (the top level's best when none is)
    confidence: float
    sure: bool  # False: not even the top level reached min_confidence; a person should look
    ranking: list[tuple[str, float]]  # the most probable categories (leaves)
    levels: list[LevelSuggestion]  # one per level of the category path
    matches: list[Scored]  # the closest catalogue items
    evidence: dict[str, float]  # for the top category: best image, token-set and n-gram similarity
    skipped: list[tuple[str, str]] = field(default_factory=list)  # catalogue photos that could not be read, why


def check_options(scoring: str, image_weight: float | None, min_confidence: float) -> str:
    """The scoring asked for ("blend" when an image weight is given); refuses impossible combinations early."""
    if scoring not in SCORINGS:
        raise ImgclfError(f"--scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ImgclfError(f"--min-confidence {min_confidence:g} is outside 0..1; 0.5 is usual")
    if image_weight is None:
        return scoring
    check_weight(image_weight)
    if scoring == "learned":
        raise ImgclfError("--image-weight sets the fixed blend; use --scoring blend, or leave it out")
    return "blend"


class CatalogMatcher:
    """The whole catalogue as reference plus a scoring: suggestions for batches of new products."""

    def __init__(self, catalog: Catalog, embedder: Embedder, reference: Reference, scoring: str,
                 learned: LearnedMatcher | None, image_weight: float, k: int, min_confidence: float) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.reference = reference
        self.scoring = scoring
        self.learned = learned
        self.image_weight = image_weight
        self.k = k
        self.min_confidence = min_confidence
        self.hierarchy = Hierarchy(reference.labels)

    @classmethod
    def build(cls, catalog: Catalog, embedder: Embedder, *, scoring: str = "auto",
              image_weight: float | None = None, k: int | None = None,
              min_confidence: float = DEFAULT_MIN_CONFIDENCE, matcher_dir: Path | None = None) -> CatalogMatcher:
        """Resolve the scoring; fit the learned matcher or load it from ``matcher_dir`` (default: the cache)."""
        scoring = check_options(scoring, image_weight, min_confidence)
        if scoring == "auto":
            scoring = "learned" if can_learn(catalog) else "blend"
        k = DEFAULT_TOP_K if k is None else k
        if k < 1:
            raise ImgclfError(f"--top-k {k} must be at least 1")
        if scoring == "blend":
            weight = DEFAULT_IMAGE_WEIGHT if image_weight is None else image_weight
            return cls(catalog, embedder, Reference(catalog), "blend", None, weight, k, min_confidence)
        fingerprint = catalog.fingerprint(embedder.identity)
        folder = matcher_dir or cache_dir() / "matchers" / fingerprint[:24]
        loaded = LearnedMatcher.load(folder, fingerprint)
        if loaded is None:
            log.info(f"fitting the matcher on held-out products of {catalog.source} (saved to {folder})")
            learned = LearnedMatcher.fit(catalog)
            reference = Reference(catalog)
            learned.save(folder, fingerprint, reference.probe)
        else:
            learned, probe = loaded
            reference = Reference(catalog, probe=probe)
        return cls(catalog, embedder, reference, "learned", learned, learned.blend_weight, k, min_confidence)

    def probabilities(self, queries: Queries, items: ItemScores) -> np.ndarray:
        if self.learned is not None:
            return self.learned.probabilities(self.reference, queries, items)
        return self.reference.blend(queries, self.image_weight, self.k, items)

    def suggest(self, queries: Queries) -> list[Suggestion]:
        """One suggestion per query, scored in chunks so a large batch never builds a huge matrix."""
        if not (queries.has_image | queries.has_name).all():
            raise ImgclfError("every product needs a photo, a name or both to be matched")
        suggestions: list[Suggestion] = []
        for start in range(0, len(queries.names), QUERY_CHUNK):
            chunk = queries.rows(slice(start, start + QUERY_CHUNK))
            items = self.reference.item_scores(chunk)
            probabilities = self.probabilities(chunk, items)
            for row in range(len(chunk.names)):
                suggestions.append(self._suggestion(chunk, items, probabilities, row))
        return suggestions

    def _suggestion(self, queries: Queries, items: ItemScores, probabilities: np.ndarray, row: int) -> Suggestion:
        reference = self.reference
        order = np.argsort(-probabilities[row], kind="stable")
        levels = self.hierarchy.levels(probabilities[row])
        chosen = Hierarchy.back_off(levels, self.min_confidence)
        top = levels[0] if chosen is None else chosen
        has_image, has_name = bool(queries.has_image[row]), bool(queries.has_name[row])
        weight = self.image_weight if has_image and has_name else float(has_image)
        combined = weight * items.image[row] + (1.0 - weight) * items.token_set[row]
        closest = np.argsort(-combined, kind="stable")[:self.k]
        matches = [Scored(reference.items[i], float(items.image[row, i]), float(items.token_set[row, i]),
                          float(combined[i])) for i in closest]
        members = reference.members[order[0]]
        evidence = {"image_similarity": float(items.image[row, members].max()) if has_image else float("nan"),
                    "name_token_set": float(items.token_set[row, members].max()) if has_name else float("nan"),
                    "name_ngrams": float(items.ngrams[row, members].max()) if has_name else float("nan")}
        ranking = [(reference.labels[i], float(probabilities[row, i])) for i in order[:RANKED]]
        return Suggestion(top.label, top.probability, chosen is not None, ranking, levels, matches, evidence)
