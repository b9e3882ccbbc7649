"""Product matching: which catalogue items is a new product like, by its photo and its name?

Each catalogue item gets an image score (cosine of the photos' embeddings)
and a name score (rapidfuzz's token-set ratio, which ignores word order and
extra words: "Nike Air Max 90 white" matches "air max 90 (white)"). The final
score is ``image_weight * image + (1 - image_weight) * name``; the suggested
category is a vote of the top ``k`` matches, each weighted by its score, and
its confidence is the winner's share of the vote.

``evaluate`` measures this honestly: it holds out part of the catalogue
(stratified by category), chooses the image weight on a validation part,
and reports category accuracy on a test part for image-only, name-only and
combined scoring. Held-out items are only ever compared with the remaining
reference items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.embeddings.embedder import Embedder
from imgclf.embeddings.similarity import normalise
from imgclf.embeddings.tables import IMAGE_COLUMN, read_items
from imgclf.errors import ImgclfError

CATALOG_COLUMNS = (IMAGE_COLUMN, "name", "category")
DEFAULT_IMAGE_WEIGHT = 0.5
DEFAULT_TOP_K = 5
WEIGHT_GRID = tuple(round(step * 0.05, 2) for step in range(21))
HELD_OUT_SHARE = 0.2  # of each category, for validation and again for test


@dataclass
class Scored:
    """One catalogue item scored against a query."""

    item: dict[str, str]
    image_score: float
    name_score: float
    score: float


@dataclass
class MatchResult:
    category: str
    confidence: float  # the winning category's share of the top-k vote
    matches: list[Scored]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # catalogue images that could not be read, why


@dataclass
class Catalog:
    """Catalogue items with their unit image embeddings (rows of unreadable images are dropped)."""

    items: list[dict[str, str]]
    vectors: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, source: str | Path, embedder: Embedder) -> Catalog:
        items = read_items(source, CATALOG_COLUMNS)
        embedded = embedder.embed_files([Path(item[IMAGE_COLUMN]) for item in items], description="Catalogue")
        ok = embedded.ok
        if not ok.any():
            raise ImgclfError(f"{source}: no catalogue image could be read; check the image column's paths")
        skipped = [(item[IMAGE_COLUMN], error) for item, error in zip(items, embedded.errors) if error]
        return cls([item for item, good in zip(items, ok) if good], normalise(embedded.vectors[ok]), skipped)

    @property
    def categories(self) -> list[str]:
        return [item["category"] for item in self.items]

    @property
    def names(self) -> list[str]:
        return [item["name"] for item in self.items]


def name_scores(queries: list[str], names: list[str]) -> np.ndarray:
    """(queries, names) token-set similarity in [0, 1], after lower-casing and dropping punctuation."""
    from rapidfuzz import fuzz, process, utils

    if not queries or not names:
        return np.zeros((len(queries), len(names)), dtype=np.float32)
    return process.cdist(queries, names, scorer=fuzz.token_set_ratio, processor=utils.default_process,
                         dtype=np.float32, workers=-1) / 100.0


def image_scores(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(queries, references) cosine similarity of embeddings, clipped to [0, 1]."""
    return np.clip(normalise(queries) @ normalise(references).T, 0.0, 1.0)


def vote(scores: np.ndarray, categories: list[str], k: int) -> list[tuple[str, float, np.ndarray]]:
    """Per query row: (winning category, its share of the vote, indices of the top k), votes weighted by score."""
    k = max(1, min(k, scores.shape[1]))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    results = []
    for row, indices in enumerate(top):
        tally: dict[str, float] = {}
        for index in indices:
            tally[categories[index]] = tally.get(categories[index], 0.0) + float(scores[row, index])
        winner = max(tally, key=lambda name: (tally[name], -list(tally).index(name)))
        total = sum(tally.values())
        results.append((winner, tally[winner] / total if total > 0 else 1.0 / len(tally), indices))
    return results


def match(catalog: Catalog, query_vector: np.ndarray | None, query_name: str | None,
          image_weight: float = DEFAULT_IMAGE_WEIGHT, k: int = DEFAULT_TOP_K) -> MatchResult:
    """Score every catalogue item against a photo and/or a name and suggest a category."""
    if query_vector is None and not query_name:
        raise ImgclfError("give --image, --name or both to match against the catalogue")
    if not 0.0 <= image_weight <= 1.0:
        raise ImgclfError(f"--image-weight {image_weight:g} is outside 0..1; 1 uses only the photo, 0 only the name")
    count = len(catalog.items)
    images = image_scores(query_vector[None], catalog.vectors)[0] if query_vector is not None else np.zeros(count)
    names = name_scores([query_name], catalog.names)[0] if query_name else np.zeros(count)
    weight = image_weight if query_vector is not None and query_name else float(query_vector is not None)
    combined = weight * images + (1.0 - weight) * names
    category, confidence, top = vote(combined[None], catalog.categories, k)[0]
    matches = [Scored(catalog.items[index], float(images[index]), float(names[index]), float(combined[index]))
               for index in top]
    return MatchResult(category, confidence, matches)


# ----------------------------------------------------------------- evaluation
@dataclass
class MatchEvaluation:
    """Category accuracy on held-out catalogue items, per scoring, and the image weight chosen on validation."""

    image_weight: float
    validation_accuracy: float
    test_accuracy: dict[str, float]  # "image", "name", "combined"
    reference_items: int
    validation_items: int
    test_items: int
    k: int
    weight_curve: list[tuple[float, float]]  # (image weight, validation accuracy)


def held_out_split(categories: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of reference, validation and test items: per category, a share of each held out.

    A category with fewer than three items stays wholly in the reference
    part, so every held-out item's category can be found.
    """
    generator = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"reference": [], "validation": [], "test": []}
    by_category: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        by_category.setdefault(category, []).append(index)
    for members in by_category.values():
        members = list(generator.permutation(members))
        held = max(1, round(HELD_OUT_SHARE * len(members))) if len(members) >= 3 else 0
        parts["test"] += members[:held]
        parts["validation"] += members[held:2 * held]
        parts["reference"] += members[2 * held:]
    return {name: np.array(sorted(indices), dtype=np.int64) for name, indices in parts.items()}


def evaluate(catalog: Catalog, k: int = DEFAULT_TOP_K, seed: int = 0) -> MatchEvaluation:
    """Choose the image weight on a validation part, then report test accuracy of each scoring."""
    parts = held_out_split(catalog.categories, seed)
    if not len(parts["test"]):
        raise ImgclfError("the catalogue is too small to evaluate: it needs categories with at least 3 items each")
    reference = parts["reference"]
    categories = [catalog.categories[index] for index in reference]

    def scores(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (image_scores(catalog.vectors[queries], catalog.vectors[reference]),
                name_scores([catalog.names[i] for i in queries], [catalog.names[i] for i in reference]))

    def accuracy(queries: np.ndarray, images: np.ndarray, names: np.ndarray, weight: float) -> float:
        predicted = vote(weight * images + (1.0 - weight) * names, categories, k)
        return float(np.mean([winner == catalog.categories[query]
                              for (winner, _, _), query in zip(predicted, queries)]))

    validation = parts["validation"]
    validation_scores = scores(validation)
    curve = [(weight, accuracy(validation, *validation_scores, weight)) for weight in WEIGHT_GRID]
    best = max(score for _, score in curve)
    # among equally good weights, the most balanced one
    chosen = min((weight for weight, score in curve if score == best), key=lambda weight: abs(weight - 0.5))
    test_scores = scores(parts["test"])
    test = {name: accuracy(parts["test"], *test_scores, weight)
            for name, weight in (("image", 1.0), ("name", 0.0), ("combined", chosen))}
    return MatchEvaluation(chosen, best, test, len(reference), len(parts["validation"]), len(parts["test"]), k, curve)
