"""Near-duplicates: images that are the same picture without being the same bytes.

Exact duplicates are found by content hash (``imgclf inspect``); a resized,
re-encoded, cropped or mirrored copy has other bytes but almost the same
embedding. Across splits such a pair is leakage (the test set contains an
image the model trained on, in disguise); under two labels it is a label
conflict; inside one split it over-weights that picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.data.inspect import DuplicateGroup
from imgclf.data.sources import Item
from imgclf.embeddings.similarity import NEAR_DUPLICATE, normalise

NEIGHBOURS = 10  # per image; a picture with more near copies than this is reported through its first ten


@dataclass
class NearDuplicatePair:
    first: Item
    second: Item
    score: float

    @property
    def kind(self) -> str:
        """``leakage`` across splits, ``label-conflict`` under different labels, else ``within-split``."""
        return DuplicateGroup([self.first.path, self.second.path], [self.first.split or "", self.second.split or ""],
                              ["|".join(self.first.labels), "|".join(self.second.labels)]).kind

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "similarity": round(self.score, 4),
                "paths": [str(self.first.path), str(self.second.path)],
                "splits": [self.first.split or "", self.second.split or ""],
                "labels": ["|".join(self.first.labels), "|".join(self.second.labels)]}


def find_near_duplicates(items: list[Item], vectors: np.ndarray, digests: list[str] | None = None,
                         threshold: float = NEAR_DUPLICATE) -> list[NearDuplicatePair]:
    """Pairs of ``items`` whose embeddings' cosine is at least ``threshold``, most similar first.

    Pairs with equal ``digests`` (identical bytes) are left out: they are
    already reported as exact duplicates.
    """
    import faiss

    if len(items) < 2:
        return []
    unit = normalise(vectors)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    scores, neighbours = index.search(unit, min(len(items), NEIGHBOURS + 1))
    pairs: dict[tuple[int, int], float] = {}
    for row, (row_scores, row_neighbours) in enumerate(zip(scores, neighbours)):
        for score, other in zip(row_scores, row_neighbours):
            if other < 0 or other == row or score < threshold:
                continue
            key = (min(row, int(other)), max(row, int(other)))
            if digests is not None and digests[key[0]] == digests[key[1]]:
                continue
            pairs[key] = max(pairs.get(key, 0.0), float(min(score, 1.0)))
    order = {"leakage": 0, "label-conflict": 1, "within-split": 2}
    found = [NearDuplicatePair(items[a], items[b], score) for (a, b), score in pairs.items()]
    return sorted(found, key=lambda pair: (order[pair.kind], -pair.score, str(pair.first.path)))


def draw_pairs(pairs: list[NearDuplicatePair], path: Path, limit: int = 12) -> Path:
    """The first ``limit`` pairs side by side, each titled with its kind, split and similarity."""
    from imgclf.data.decode import decode_file
    from imgclf.pictures import save_image_grid

    images, titles = [], []
    for pair in pairs[:limit]:
        for item in (pair.first, pair.second):
            decoded = decode_file(Path(item.path), (160, 160), policy="pad")
            images.append(decoded.pixels if decoded.pixels is not None else np.zeros((160, 160, 3), np.uint8))
            titles.append(f"{pair.kind} {pair.score:.3f}\n{item.split or ''} {'|'.join(item.labels)}: "
                          f"{Path(item.path).name[:18]}")
    return save_image_grid(images, titles, path, columns=4, title="near-duplicate pairs (left and right)")
