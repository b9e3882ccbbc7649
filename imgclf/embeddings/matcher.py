"""The learned matcher: a logistic regression over (query, candidate category) rows, fitted on held-out products.

Why learned: how much a photo or a name says depends on the catalogue (a
grocery shelf of look-alike bottles, or a fashion range where names are
codes). The evidence per candidate category comes from
:meth:`Reference.category_evidence`; the rows it learns from are catalogue
items *of products held out of the reference* (grouped folds), so the
weights reflect a product the catalogue has never seen, not a second photo
of a known one.

A candidate's logit is ``w . x``; the category probabilities are a softmax
over candidates with a temperature fitted by maximum likelihood on the same
held-out rows, so a 0.9 means right about nine times in ten. A query with
only a photo or only a name has its own model (``image``, ``name``) over
that side's features, fitted on the same rows.

Saved as ``matcher.json`` (weights, scaler, temperature) and ``probe.npz``
(the full catalogue's embedding probe): plain numbers, never a pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from imgclf.embeddings.match import (
    DEFAULT_TOP_K,
    Catalog,
    ItemScores,
    Probe,
    Queries,
    Reference,
    one_blas_thread,
    softmax,
)
from imgclf.errors import ImgclfError
from imgclf.files import write_folder_atomic

FORMAT = 1
MATCHER_FILE = "matcher.json"
PROBE_FILE = "probe.npz"
FEATURES = ("image_max", "image_nearest_mean", "image_margin", "image_vote", "probe",
            "token_set_max", "token_set_nearest_mean", "token_set_margin", "token_set_vote",
            "ngrams_max", "ngrams_nearest_mean", "ngrams_margin", "ngrams_vote",
            "label_token_set", "label_ngrams", "agree", "image_x_name")
IMAGE_FEATURES = {"image_max", "image_nearest_mean", "image_margin", "image_vote", "probe", "agree", "image_x_name"}
NAME_FEATURES = {name for name in FEATURES if name not in IMAGE_FEATURES} | {"agree", "image_x_name"}
MODES = {"both": set(FEATURES), "image": IMAGE_FEATURES - NAME_FEATURES, "name": NAME_FEATURES - IMAGE_FEATURES}
FOLDS = 4
# auto scoring picks the learned matcher from this many products with at least two in two categories;
# below that the held-out rows are too few to learn 17 weights from and the fixed blend is used
MIN_PRODUCTS = 30
WEIGHT_GRID = tuple(round(step * 0.05, 2) for step in range(21))


@dataclass
class ModeModel:
    """One logistic regression over standardised features, and its softmax temperature."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    temperature: float

    def logits(self, evidence: dict[str, np.ndarray]) -> np.ndarray:
        stacked = np.stack([evidence[name] for name in self.features], axis=-1).astype(np.float64)
        standard = (stacked - np.array(self.mean)) / np.array(self.scale)
        return (standard @ np.array(self.coef) + self.intercept) / self.temperature


@dataclass
class LearnedMatcher:
    """Per query mode (both, image, name) a model; plus the blend weight that did best on the same held-out rows."""

    models: dict[str, ModeModel]
    blend_weight: float
    trained_on: int  # held-out query rows

    def probabilities(self, reference: Reference, queries: Queries, items: ItemScores | None = None) -> np.ndarray:
        """(queries, reference categories) calibrated probabilities."""
        evidence = reference.category_evidence(queries, items)
        modes = query_modes(queries)
        probabilities = np.zeros((len(modes), len(reference.labels)))
        for mode, model in self.models.items():
            rows = modes == mode
            if rows.any():
                probabilities[rows] = softmax(model.logits({k: v[rows] for k, v in evidence.items()}))
        return probabilities

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, catalog: Catalog, indices: np.ndarray | None = None, seed: int = 0) -> LearnedMatcher:
        """Fit on products of ``catalog`` (rows ``indices``, all by default), each fold held out of the reference."""
        with one_blas_thread():
            return cls._fit(catalog, np.arange(len(catalog.items)) if indices is None else indices, seed)

    @classmethod
    def _fit(cls, catalog: Catalog, indices: np.ndarray, seed: int) -> LearnedMatcher:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        folds = held_out_folds(catalog, indices, seed)
        if not folds:
            raise ImgclfError(f"{catalog.source}: too few products to learn a matcher from; it needs at least two "
                              "products in each of two categories (or use --scoring blend)")
        models = {}
        for mode, names in MODES.items():
            features = [name for name in FEATURES if name in names]
            x = np.concatenate([np.stack([fold.evidence[name] for name in features], axis=-1).reshape(-1, len(features))
                                for fold in folds])
            y = np.concatenate([(np.arange(len(fold.reference.labels))[None] == fold.truth[:, None]).ravel()
                                for fold in folds])
            scaler = StandardScaler().fit(x)
            scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
            model = LogisticRegression(C=1.0, max_iter=500).fit((x - scaler.mean_) / scale, y)
            fitted = ModeModel(features, scaler.mean_.tolist(), scale.tolist(), model.coef_[0].tolist(),
                               float(model.intercept_[0]), 1.0)
            fitted.temperature = fit_temperature([fitted.logits(fold.evidence) for fold in folds],
                                                 [fold.truth for fold in folds])
            models[mode] = fitted
        return cls(models, choose_blend_weight(folds), sum(len(fold.truth) for fold in folds))

    # ----------------------------------------------------------------- saving
    def save(self, folder: Path, fingerprint: str, probe: Probe) -> Path:
        def fill(partial: Path) -> None:
            (partial / MATCHER_FILE).write_text(json.dumps(
                {"format": FORMAT, "fingerprint": fingerprint, "blend_weight": self.blend_weight,
                 "trained_on": self.trained_on, "models": {mode: asdict(model) for mode, model in self.models.items()}},
                indent=1))
            np.savez(partial / PROBE_FILE, coef=probe.coef, intercept=probe.intercept)

        return write_folder_atomic(folder, fill)

    @classmethod
    def load(cls, folder: Path, fingerprint: str) -> tuple[LearnedMatcher, Probe] | None:
        """The matcher saved in ``folder`` for exactly this catalogue and model; None when missing or stale."""
        try:
            saved = json.loads((folder / MATCHER_FILE).read_text())
            arrays = np.load(folder / PROBE_FILE, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if saved.get("format") != FORMAT or saved.get("fingerprint") != fingerprint:
            return None
        models = {mode: ModeModel(**fields) for mode, fields in saved["models"].items()}
        return cls(models, saved["blend_weight"], saved["trained_on"]), Probe(arrays["coef"], arrays["intercept"])


def can_learn(catalog: Catalog) -> bool:
    """The documented rule for ``--scoring auto``: enough products, and two categories with two or more."""
    per_category: dict[str, set[str]] = {}
    for category, product in zip(catalog.categories, catalog.products):
        per_category.setdefault(category, set()).add(product)
    return (len(set(catalog.products)) >= MIN_PRODUCTS
            and sum(len(products) >= 2 for products in per_category.values()) >= 2)


def query_modes(queries: Queries) -> np.ndarray:
    image, name = queries.has_image, queries.has_name
    return np.where(image & name, "both", np.where(image, "image", "name"))


def product_folds(products: Sequence[str], categories: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Item indices per fold; every item of a product lands in the same fold, products spread per category."""
    generator = np.random.default_rng(seed)
    first_category: dict[str, str] = {}
    for product, category in zip(products, categories):
        first_category.setdefault(product, category)
    by_category: dict[str, list[str]] = {}
    for product, category in first_category.items():
        by_category.setdefault(category, []).append(product)
    fold_of: dict[str, int] = {}
    offset = 0
    for category in sorted(by_category):
        for position, product in enumerate(generator.permutation(by_category[category])):
            fold_of[str(product)] = (offset + position) % folds
        offset += len(by_category[category])  # so single-product categories do not all land in fold 0
    return [np.array([i for i, product in enumerate(products) if fold_of[product] == fold], dtype=np.int64)
            for fold in range(folds)]


@dataclass
class HeldOutFold:
    """Items of held-out products scored against a reference of the other products, with their true categories."""

    reference: Reference
    items: ItemScores
    evidence: dict[str, np.ndarray]
    truth: np.ndarray  # column of the true category in reference.labels


def held_out_folds(catalog: Catalog, indices: np.ndarray, seed: int) -> list[HeldOutFold]:
    """Per fold of ``indices``' products: its items against a reference of the other folds.

    Items whose category has no product left in the reference cannot be
    placed and are left out, as such a product could not be placed in use.
    """
    products = [catalog.products[i] for i in indices]
    categories = [catalog.categories[i] for i in indices]
    folds = []
    for fold in product_folds(products, categories, FOLDS, seed):
        held = indices[fold]
        reference_rows = np.setdiff1d(indices, held)
        if not len(held) or not len(reference_rows):
            continue
        reference = Reference(catalog, reference_rows)
        position = {label: column for column, label in enumerate(reference.labels)}
        placeable = held[[catalog.categories[i] in position for i in held]]
        if len(reference.labels) < 2 or not len(placeable):
            continue
        queries = Queries.of_catalog(catalog, placeable)
        items = reference.item_scores(queries)
        truth = np.array([position[catalog.categories[i]] for i in placeable])
        folds.append(HeldOutFold(reference, items, reference.category_evidence(queries, items), truth))
    return folds


def fit_temperature(logits: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """The softmax temperature with the least negative log-likelihood of the true categories."""
    from scipy.optimize import minimize_scalar

    def loss(temperature: float) -> float:
        total = 0.0
        for block, truth in zip(logits, truths):
            scaled = block / temperature
            scaled = scaled - scaled.max(axis=1, keepdims=True)
            total -= float((scaled[np.arange(len(truth)), truth] - np.log(np.exp(scaled).sum(axis=1))).sum())
        return total

    return float(minimize_scalar(loss, bounds=(0.05, 20.0), method="bounded").x)


def choose_blend_weight(folds: list[HeldOutFold]) -> float:
    """The fixed blend's image weight with the best held-out accuracy; among ties the most balanced."""
    curve = []
    for weight in WEIGHT_GRID:
        correct = sum(int((fold.reference.vote(weight * fold.items.image + (1.0 - weight) * fold.items.token_set,
                                               DEFAULT_TOP_K).argmax(axis=1) == fold.truth).sum()) for fold in folds)
        curve.append((weight, correct))
    best = max(correct for _, correct in curve)
    return min((weight for weight, correct in curve if correct == best), key=lambda weight: abs(weight - 0.5))
