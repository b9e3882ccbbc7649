"""Product matching evidence: how a new product's photo and name compare with a catalogue, item by item and per category.

A :class:`Catalog` is the user's CSV (image, name, category, optional
product/sku) with each photo's embedding. A :class:`Reference` is the part
of it that queries are compared with; it answers, for a batch of
:class:`Queries`:

- item scores: image cosine, rapidfuzz token-set ratio of the names (word
  order and extra words do not matter) and the cosine of character n-gram
  TF-IDF vectors (scikit-learn, ``char_wb``: "yoghurt" and "yogurt" share
  most n-grams, which no word-level score sees);
- category scores: the fixed blend ``w * image + (1 - w) * token-set`` with a
  score-weighted top-k vote (each category's share of the vote), and the
  per-category evidence that the learned matcher (:mod:`.matcher`) combines.

Categories may be paths (``Dairy/Milk``); the tree is
:class:`imgclf.data.hierarchy.Hierarchy`.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.hierarchy import SEPARATOR, Hierarchy
from imgclf.embeddings.embedder import Embedder
from imgclf.embeddings.similarity import normalise
from imgclf.embeddings.store import image_key
from imgclf.embeddings.tables import IMAGE_COLUMN, read_items
from imgclf.errors import ImgclfError

CATALOG_COLUMNS = (IMAGE_COLUMN, "name", "category")
PRODUCT_COLUMNS = ("product", "sku")  # the first present groups photos of one product
DEFAULT_IMAGE_WEIGHT = 0.5
DEFAULT_TOP_K = 5
NEAREST = 3  # items per category whose mean similarity is a feature
QUERY_CHUNK = 1024  # queries scored at once: (chunk, items) matrices stay small


def normalised_name(name: str) -> str:
    """Lower case, punctuation to spaces, single spaces: how names are compared and products grouped."""
    from rapidfuzz import utils

    return " ".join(utils.default_process(name).split())


@dataclass
class Catalog:
    """Catalogue items with their unit image embeddings (rows of unreadable images are dropped)."""

    items: list[dict[str, str]]
    vectors: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    @staticmethod
    def read(source: str | Path) -> list[dict[str, str]]:
        """The catalogue's rows, checked (columns, empty cells, category paths) before any model is loaded."""
        items = read_items(source, CATALOG_COLUMNS)
        Hierarchy([item["category"] for item in items], where=f"{source}, column category")
        return items

    @classmethod
    def load(cls, source: str | Path, embedder: Embedder, items: list[dict[str, str]] | None = None) -> Catalog:
        """The rows (``items`` when already read) with their photos embedded; unreadable photos are skipped."""
        items = cls.read(source) if items is None else items
        embedded = embedder.embed_files([Path(item[IMAGE_COLUMN]) for item in items], description="Catalogue")
        ok = embedded.ok
        if not ok.any():
            raise ImgclfError(f"{source}: no catalogue image could be read; check the image column's paths")
        skipped = [(item[IMAGE_COLUMN], error) for item, error in zip(items, embedded.errors) if error]
        return cls([item for item, good in zip(items, ok) if good], normalise(embedded.vectors[ok]), skipped,
                   str(source))

    @property
    def categories(self) -> list[str]:
        return [item["category"] for item in self.items]

    @property
    def names(self) -> list[str]:
        return [item["name"] for item in self.items]

    @property
    def products(self) -> list[str]:
        """Which product each item shows: the product (or sku) column, else the normalised name."""
        column = next((name for name in PRODUCT_COLUMNS if any(item.get(name) for item in self.items)), None)
        return [(item.get(column, "") if column else "") or normalised_name(item["name"]) for item in self.items]

    def fingerprint(self, identity: dict) -> str:
        """sha256 of what a fitted matcher depends on: every item (photo contents, name, category, product), the model."""
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
        for item, product in zip(self.items, self.products):
            photo = str(image_key(Path(item[IMAGE_COLUMN])))  # path, size and mtime: a replaced photo refits
            digest.update("\t".join((photo, item["name"], item["category"], product, "\n")).encode())
        return digest.hexdigest()


@dataclass
class Queries:
    """New products: unit vectors (zero rows where there is no photo) and names ("" where there is none)."""

    vectors: np.ndarray
    names: list[str]

    @property
    def has_image(self) -> np.ndarray:
        return np.abs(self.vectors).sum(axis=1) > 0

    @property
    def has_name(self) -> np.ndarray:
        return np.array([bool(name.strip()) for name in self.names], dtype=bool)

    def rows(self, indices: np.ndarray | slice | list[int]) -> Queries:
        picked = np.arange(len(self.names))[indices]
        return Queries(self.vectors[picked], [self.names[i] for i in picked])

    @classmethod
    def of_catalog(cls, catalog: Catalog, indices: np.ndarray) -> Queries:
        return cls(catalog.vectors[indices], [catalog.names[i] for i in indices])


@dataclass
class ItemScores:
    """(queries, reference items) similarities, each in [0, 1]; zero rows where a query lacks that evidence."""

    image: np.ndarray
    token_set: np.ndarray
    ngrams: np.ndarray


def label_words(category: str) -> str:
    """A category path as words ("Dairy/Oat-Milk" -> "Dairy Oat Milk"), for comparing names with it."""
    return " ".join(category.replace(SEPARATOR, " ").replace("-", " ").replace("_", " ").split())


class Reference:
    """The catalogue items queries are compared with, grouped by category, with their name vectors and probe."""

    def __init__(self, catalog: Catalog, indices: np.ndarray | None = None, probe: Probe | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        indices = np.arange(len(catalog.items)) if indices is None else np.asarray(indices)
        self.items = [catalog.items[i] for i in indices]
        self.vectors = catalog.vectors[indices]
        self.names = [normalised_name(item["name"]) for item in self.items]
        self.labels = sorted({item["category"] for item in self.items})
        position = {label: column for column, label in enumerate(self.labels)}
        self.item_category = np.array([position[item["category"]] for item in self.items], dtype=np.int64)
        self.members = [np.flatnonzero(self.item_category == column) for column in range(len(self.labels))]
        self.label_names = [normalised_name(label_words(label)) for label in self.labels]
        # character n-grams within words: spelling variants and brand prefixes share most of them
        self.vectoriser = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self.vectoriser.fit(self.names + self.label_names)
        self.name_ngrams = self.vectoriser.transform(self.names)
        self.label_ngrams = self.vectoriser.transform(self.label_names)
        self._probe = probe

    @property
    def probe(self) -> Probe:
        """The embedding probe, fitted on first use (the fixed blend never needs it)."""
        if self._probe is None:
            self._probe = Probe.fit(self.vectors, self.item_category, len(self.labels))
        return self._probe

    def item_scores(self, queries: Queries) -> ItemScores:
        """Image cosine, token-set and n-gram similarity of every query with every reference item."""
        image = np.clip(queries.vectors @ self.vectors.T, 0.0, 1.0)
        names = [normalised_name(name) for name in queries.names]
        return ItemScores(image, token_set_scores(names, self.names), self._ngram_scores(names, self.name_ngrams))

    def _ngram_scores(self, names: list[str], against: Any) -> np.ndarray:  # against: a scipy sparse matrix
        vectors = self.vectoriser.transform(names)
        return np.asarray((vectors @ against.T).todense(), dtype=np.float32)

    def vote(self, scores: np.ndarray, k: int) -> np.ndarray:
        """(queries, categories) share of a score-weighted vote of each query's top ``k`` items."""
        k = max(1, min(k, scores.shape[1]))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        tally = np.zeros((len(scores), len(self.labels)), dtype=np.float64)
        rows = np.repeat(np.arange(len(scores)), k)
        np.add.at(tally, (rows, self.item_category[top.ravel()]), scores[rows, top.ravel()])
        totals = tally.sum(axis=1, keepdims=True)
        return np.where(totals > 0, tally / np.maximum(totals, 1e-12), 1.0 / len(self.labels))

    def blend(self, queries: Queries, image_weight: float, k: int, items: ItemScores | None = None) -> np.ndarray:
        """The fixed blend's category shares; a query with only a photo or only a name uses that alone."""
        items = items or self.item_scores(queries)
        weight = np.where(queries.has_image & queries.has_name, image_weight, queries.has_image.astype(float))
        return self.vote(weight[:, None] * items.image + (1.0 - weight[:, None]) * items.token_set, k)

    def category_evidence(self, queries: Queries, items: ItemScores | None = None) -> dict[str, np.ndarray]:
        """Per (query, category): the evidence the learned matcher weighs, each a (queries, categories) array."""
        items = items or self.item_scores(queries)
        evidence: dict[str, np.ndarray] = {}
        for source, scores in (("image", items.image), ("token_set", items.token_set), ("ngrams", items.ngrams)):
            best, nearest = self._per_category(scores)
            evidence[f"{source}_max"] = best
            evidence[f"{source}_nearest_mean"] = nearest
            evidence[f"{source}_margin"] = best - best.max(axis=1, keepdims=True)  # 0 for the best category
            evidence[f"{source}_vote"] = self.vote(scores, DEFAULT_TOP_K)
        evidence["probe"] = self.probe.probabilities(queries.vectors)
        names = [normalised_name(name) for name in queries.names]
        evidence["label_token_set"] = token_set_scores(names, self.label_names)
        evidence["label_ngrams"] = self._ngram_scores(names, self.label_ngrams)
        image_first = evidence["image_max"] >= evidence["image_max"].max(axis=1, keepdims=True)
        name_first = evidence["ngrams_max"] >= evidence["ngrams_max"].max(axis=1, keepdims=True)
        evidence["agree"] = (image_first & name_first).astype(np.float32)
        evidence["image_x_name"] = evidence["image_max"] * evidence["ngrams_max"]
        return evidence

    def _per_category(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per category: the best item score and the mean of the NEAREST best."""
        best = np.zeros((len(scores), len(self.labels)), dtype=np.float32)
        nearest = np.zeros_like(best)
        for column, members in enumerate(self.members):
            block = scores[:, members]
            count = min(NEAREST, block.shape[1])
            top = -np.partition(-block, count - 1, axis=1)[:, :count]
            best[:, column] = top.max(axis=1)
            nearest[:, column] = top.mean(axis=1)
        return best, nearest


@dataclass
class Probe:
    """A logistic regression from embeddings to categories, kept as plain arrays so it saves to .npz."""

    coef: np.ndarray  # (categories, dim)
    intercept: np.ndarray  # (categories,)

    @classmethod
    def fit(cls, vectors: np.ndarray, categories: np.ndarray, count: int) -> Probe:
        from sklearn.linear_model import LogisticRegression

        if count < 2:
            return cls(np.zeros((count, vectors.shape[1]), np.float32), np.zeros(count, np.float32))
        # unit vectors have tiny entries; scaling by sqrt(dim) puts them near unit variance for the default C
        scale = np.sqrt(vectors.shape[1])
        with one_blas_thread():
            model = LogisticRegression(max_iter=300).fit(vectors * scale, categories)
        coef = np.zeros((count, vectors.shape[1]), np.float32)
        intercept = np.full(count, -1e4, np.float32)  # a category the probe never saw: never chosen
        if len(model.classes_) == 2:  # sklearn keeps one row for two classes
            coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0] * scale, model.intercept_[0]
            coef[model.classes_[0]], intercept[model.classes_[0]] = 0.0, 0.0
        else:
            coef[model.classes_], intercept[model.classes_] = model.coef_ * scale, model.intercept_
        return cls(coef, intercept)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        if not len(self.intercept):
            return np.zeros((len(vectors), 0), np.float32)
        return softmax(vectors @ self.coef.T + self.intercept).astype(np.float32)


def one_blas_thread() -> AbstractContextManager[object]:
    """A context with BLAS on one thread: these fits are small, and threads cost more than they give.

    Measured on a shared 2-core machine: a 3,000 x 1,280 probe fit took
    6.6 s with the default thread pool and 1.0 s on one thread.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def token_set_scores(queries: list[str], names: list[str]) -> np.ndarray:
    """(queries, names) rapidfuzz token-set similarity in [0, 1] of already normalised names; 0 for an empty query."""
    from rapidfuzz import fuzz, process

    if not queries or not names:
        return np.zeros((len(queries), len(names)), dtype=np.float32)
    return process.cdist(queries, names, scorer=fuzz.token_set_ratio, dtype=np.float32, workers=-1) / 100.0


def check_weight(image_weight: float) -> float:
    if not 0.0 <= image_weight <= 1.0:
        raise ImgclfError(f"--image-weight {image_weight:g} is outside 0..1; 1 uses only the photo, 0 only the name")
    return image_weight
