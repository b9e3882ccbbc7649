"""A searchable set of images: embeddings in a faiss index, with the items they stand for.

```
INDEX/
  index.json     the model it was built with (reference and identity), item count, width
  items.csv      one row per indexed image: its path and the source's other columns
  vectors.npy    float16 unit-length embeddings, one row per item
```

Search is exact cosine (inner product of unit vectors in a flat faiss
index): a million 1280-wide items take 2.5 GB and answer a query in well
under a second on this CPU, and exact answers need no tuning. The index is
rebuilt from ``vectors.npy`` on load, so nothing but plain arrays and text
is read from disk.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.embeddings.embedder import Embedder
from imgclf.embeddings.similarity import normalise
from imgclf.embeddings.tables import IMAGE_COLUMN
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, write_folder_atomic

INDEX_FORMAT = 1
META_FILE, ITEMS_FILE, VECTORS_FILE = "index.json", "items.csv", "vectors.npy"


@dataclass
class Neighbour:
    """One search hit: the item's row, its position in the index and its cosine similarity."""

    item: dict[str, str]
    position: int
    score: float


class SimilarityIndex:
    """Items and their unit embeddings, searchable by cosine similarity."""

    def __init__(self, meta: dict[str, Any], items: list[dict[str, str]], vectors: np.ndarray) -> None:
        import faiss

        self.meta = meta
        self.items = items
        self.vectors = normalise(vectors)
        self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
        self._faiss.add(self.vectors)

    def __len__(self) -> int:
        return len(self.items)

    def search(self, queries: np.ndarray, k: int = 5, exclude_self: bool = False) -> list[list[Neighbour]]:
        """The ``k`` nearest items of each query row, best first; ``exclude_self`` skips the identical position."""
        if not len(self.items):
            return [[] for _ in range(len(queries))]
        wanted = min(len(self.items), k + (1 if exclude_self else 0))
        scores, positions = self._faiss.search(normalise(queries), wanted)
        results = []
        for row, (row_scores, row_positions) in enumerate(zip(scores, positions)):
            hits = [Neighbour(self.items[p], int(p), float(np.clip(s, 0.0, 1.0)))
                    for s, p in zip(row_scores, row_positions) if p >= 0 and not (exclude_self and p == row)]
            results.append(hits[:k])
        return results

    def embedder(self, device: str = "auto") -> Embedder:
        """The model the index was built with, checked to be the same weights and preprocessing."""
        embedder = Embedder.load(self.meta["model"], weights=self.meta.get("weights"), device=device,
                                 image_size=self.meta["identity"].get("image_size"))
        if _comparable(embedder.identity) != _comparable(self.meta["identity"]):
            raise ImgclfError(f"the index was built with {self.meta['model']} as it was then; its weights or "
                              "preprocessing have changed since. Rebuild it with imgclf index build")
        return embedder

    # ----------------------------------------------------------------- files
    @classmethod
    def build(cls, embedder: Embedder, items: list[dict[str, str]], weights: str | None = None
              ) -> tuple[SimilarityIndex, list[tuple[str, str]]]:
        """Embed ``items`` (each with an ``image`` path); returns the index and the (path, reason) skipped."""
        embedded = embedder.embed_files([Path(item[IMAGE_COLUMN]) for item in items], description="Indexing")
        ok = embedded.ok
        skipped = [(item[IMAGE_COLUMN], error) for item, error in zip(items, embedded.errors) if error]
        if not ok.any():
            raise ImgclfError("no image could be read, so there is nothing to index; run imgclf inspect on the source")
        meta = {"format": INDEX_FORMAT, "model": embedder.reference, "weights": weights,
                "identity": embedder.identity, "items": int(ok.sum()), "dim": embedder.dim}
        kept = [item for item, good in zip(items, ok) if good]
        return cls(meta, kept, embedded.vectors[ok]), skipped

    def save(self, directory: Path) -> Path:
        """Write the index folder atomically (a half-written index never replaces a good one)."""
        if directory.exists() and not (directory / META_FILE).exists():
            raise ImgclfError(f"--out {directory} exists and is not an index; choose another folder")

        def fill(folder: Path) -> None:
            (folder / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str), encoding="utf-8")
            columns = list(dict.fromkeys(key for item in self.items for key in item))
            with (folder / ITEMS_FILE).open("w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.items)
            np.save(folder / VECTORS_FILE, self.vectors.astype(np.float16), allow_pickle=False)

        return write_folder_atomic(directory, fill)

    @classmethod
    def load(cls, directory: str | Path) -> SimilarityIndex:
        directory = Path(directory)
        if not (directory / META_FILE).is_file():
            raise ImgclfError(f"{directory}: not an index folder (no {META_FILE}); build one with imgclf index build")
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            with (directory / ITEMS_FILE).open(newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
                items = [dict(row) for row in csv.DictReader(handle)]
            vectors = np.load(directory / VECTORS_FILE, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError, json.JSONDecodeError, csv.Error) as error:
            raise ImgclfError(f"{directory}: the index is damaged ({error}); rebuild it with imgclf index build") from None
        if meta.get("format", 0) > INDEX_FORMAT:
            raise ImgclfError(f"{directory} was written by a newer imgclf; upgrade imgclf to read it")
        if len(items) != len(vectors):
            raise ImgclfError(f"{directory}: {ITEMS_FILE} and {VECTORS_FILE} disagree; rebuild the index")
        return cls(meta, items, vectors)


def _comparable(identity: dict[str, Any]) -> str:
    """The identity without the arithmetic precision: bf16 and fp32 embeddings of a model are interchangeable."""
    return json.dumps({key: value for key, value in identity.items() if key != "precision"}, sort_keys=True,
                      default=str)
