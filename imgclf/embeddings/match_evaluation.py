"""How well does matching place a product the catalogue has never seen? Hold out whole products and measure.

Holding out random photos flatters matching: a second photo of a known
product finds its twin. Here a share of each category's *products* (the
product or sku column, else the normalised name) is held out with all
their photos; the learned matcher and the blend's image weight are fitted
on the remaining products only (their own held-out folds), and the
held-out products are compared with the remaining items only.

Per scoring: accuracy, top-3 accuracy, and accuracy on the most confident
80% of products, the share a team would accept without looking, with the
confidence threshold that covers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgclf.data.hierarchy import Hierarchy
from imgclf.embeddings.match import Catalog, Queries, Reference
from imgclf.embeddings.matcher import LearnedMatcher, product_folds
from imgclf.errors import ImgclfError

HELD_OUT_SHARE = 0.2
COVERAGE = 0.8
SCORING_NAMES = ("image", "name", "blend", "learned")


@dataclass
class ScoringResult:
    accuracy: float
    top3_accuracy: float
    accuracy_at_coverage: float  # on the most confident COVERAGE share of the products
    threshold: float  # the confidence at and above which that share lies
    level_accuracy: list[float] = field(default_factory=list)  # per level of a category path


@dataclass
class MatchEvaluation:
    """Scores of each scoring on held-out products; sizes of the parts; the blend weight chosen."""

    results: dict[str, ScoringResult]
    image_weight: float
    reference_items: int
    reference_products: int
    test_items: int
    test_products: int
    trained_on: int
    k: int
    coverage: float = COVERAGE


def product_split(catalog: Catalog, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reference, test) item indices: about HELD_OUT_SHARE of each category's products, with all their photos.

    Products are dealt into 1 / HELD_OUT_SHARE folds per category; one fold
    is the test part. A category's only product stays in the reference, so
    every held-out product's category can be found.
    """
    folds = product_folds(catalog.products, catalog.categories, round(1 / HELD_OUT_SHARE), seed)
    test = folds[0]
    reference = np.setdiff1d(np.arange(len(catalog.items)), test)
    kept = {catalog.categories[i] for i in reference}
    orphans = [i for i in test if catalog.categories[i] not in kept]
    return np.union1d(reference, orphans).astype(np.int64), np.setdiff1d(test, orphans).astype(np.int64)


def evaluate(catalog: Catalog, k: int = 5, seed: int = 0) -> MatchEvaluation:
    """Fit on the reference products, then score every scoring on the held-out products."""
    reference_rows, test_rows = product_split(catalog, seed)
    if not len(test_rows):
        raise ImgclfError(f"{catalog.source}: too small to evaluate; it needs categories with at least two "
                          "products (photos of one product share a product or sku column, else a name)")
    learned = LearnedMatcher.fit(catalog, reference_rows, seed)
    reference = Reference(catalog, reference_rows)
    queries = Queries.of_catalog(catalog, test_rows)
    position = {label: column for column, label in enumerate(reference.labels)}
    truth = np.array([position[catalog.categories[i]] for i in test_rows])
    items = reference.item_scores(queries)
    probabilities = {"image": reference.blend(queries, 1.0, k, items),
                     "name": reference.blend(queries, 0.0, k, items),
                     "blend": reference.blend(queries, learned.blend_weight, k, items),
                     "learned": learned.probabilities(reference, queries, items)}
    hierarchy = Hierarchy(reference.labels)
    results = {name: score(values, truth, hierarchy) for name, values in probabilities.items()}
    products = catalog.products
    return MatchEvaluation(results, learned.blend_weight, len(reference_rows),
                           len({products[i] for i in reference_rows}), len(test_rows),
                           len({products[i] for i in test_rows}), learned.trained_on, k)


def score(probabilities: np.ndarray, truth: np.ndarray, hierarchy: Hierarchy) -> ScoringResult:
    """Accuracy, top-3, accuracy at COVERAGE and per-level accuracy of (queries, categories) probabilities."""
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    correct = ranked[:, 0] == truth
    confidence = probabilities[np.arange(len(truth)), ranked[:, 0]]
    kept = max(1, int(np.ceil(COVERAGE * len(truth))))
    most_sure = np.argsort(-confidence, kind="stable")[:kept]
    levels = []
    if not hierarchy.is_flat:
        for depth in range(1, hierarchy.depth + 1):
            totals, true_node, has_level = hierarchy.at_depth(depth, probabilities, truth)
            levels.append(float((totals.argmax(axis=1) == true_node)[has_level].mean()))
    return ScoringResult(float(correct.mean()), float((ranked[:, :3] == truth[:, None]).any(axis=1).mean()),
                         float(correct[most_sure].mean()), float(confidence[most_sure].min()), levels)
