"""The review page for catalogue suggestions: a person accepts or corrects each new product's category.

``imgclf serve --catalog catalog.csv --queries new.csv`` matches every new
product once at start-up and serves ``static/review.html``: per product its
photo and name, the suggested category (one level per part of a category
path, with confidence), the closest catalogue items, and a choice of
category. Each decision is written to the accepted CSV (image, name,
category and the queries' other columns: the catalogue's own format, so it
can be appended to the catalogue) by replacing the whole file atomically;
a reopened page shows the decisions already made.

Photos are served only for the files the queries and the catalogue list,
by index, never by a path the client sends.
"""

from __future__ import annotations

import csv
import io
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from imgclf import __version__
from imgclf.data.hierarchy import parse_path
from imgclf.embeddings.match import Queries
from imgclf.embeddings.match_batch import read_queries
from imgclf.embeddings.similarity import normalise
from imgclf.embeddings.suggest import CatalogMatcher, Suggestion
from imgclf.embeddings.tables import IMAGE_COLUMN
from imgclf.errors import ImgclfError
from imgclf.files import write_text_atomic
from imgclf.review.component import base_css

SHOWN_MATCHES = 4


class Decision(BaseModel):
    category: str


class ReviewQueue:
    """The new products, their suggestions and the decisions so far (kept in the accepted CSV)."""

    def __init__(self, matcher: CatalogMatcher, queries: Path, accepted: Path) -> None:
        self.matcher = matcher
        self.rows = read_queries(queries)
        self.accepted = accepted
        self.columns = [IMAGE_COLUMN, "name", "category",
                        *(column for column in self.rows[0] if column not in (IMAGE_COLUMN, "name", "category"))]
        photo_rows = [index for index, row in enumerate(self.rows) if row.get(IMAGE_COLUMN)]
        embedded = matcher.embedder.embed_files([Path(self.rows[index][IMAGE_COLUMN]) for index in photo_rows],
                                                description="Embedding new photos")
        asked = Queries(np.zeros((len(self.rows), matcher.reference.vectors.shape[1]), dtype=np.float32),
                          [row.get("name", "") for row in self.rows])
        self.photo_errors: dict[int, str] = {}
        for row, vector, error in zip(photo_rows, normalise(embedded.vectors), embedded.errors):
            if error:
                self.photo_errors[row] = error
            else:
                asked.vectors[row] = vector
        usable = [index for index in range(len(self.rows)) if asked.has_image[index] or asked.has_name[index]]
        self.suggestions: dict[int, Suggestion] = dict(zip(usable, matcher.suggest(asked.rows(usable))))
        self.decisions: dict[int, str] = self._read_decisions()
        self.lock = threading.Lock()
        self.item_number = {id(item): number for number, item in enumerate(matcher.reference.items)}

    def _key(self, row: dict[str, str]) -> tuple[str, str]:
        return row.get(IMAGE_COLUMN, ""), row.get("name", "")

    def _read_decisions(self) -> dict[int, str]:
        if not self.accepted.is_file():
            return {}
        with self.accepted.open(newline="", encoding="utf-8") as handle:
            decided = {self._key(row): row.get("category", "") for row in csv.DictReader(handle)}
        return {index: decided[self._key(row)] for index, row in enumerate(self.rows) if self._key(row) in decided}

    def decide(self, index: int, category: str) -> int:
        """Record ``category`` for product ``index`` and rewrite the accepted CSV; the number of decisions."""
        with self.lock:
            self.decisions[index] = category
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for number in sorted(self.decisions):
                writer.writerow({**self.rows[number], "category": self.decisions[number]})
            write_text_atomic(self.accepted, buffer.getvalue())
            return len(self.decisions)

    def describe(self, index: int) -> dict[str, Any]:
        row, suggestion = self.rows[index], self.suggestions.get(index)
        described: dict[str, Any] = {
            "id": index, "name": row.get("name", ""),
            "image": f"v1/review/photo/{index}" if row.get(IMAGE_COLUMN) and index not in self.photo_errors else None,
            "problem": self.photo_errors.get(index, ""), "decision": self.decisions.get(index)}
        if suggestion is None:
            return {**described, "suggestion": None, "closest": []}
        return {**described,
                "suggestion": {"category": suggestion.category, "confidence": suggestion.confidence,
                               "sure": suggestion.sure,
                               "levels": [{"category": level.label, "confidence": level.probability}
                                          for level in suggestion.levels],
                               "ranking": [{"category": label, "probability": p} for label, p in suggestion.ranking]},
                "closest": [{"name": match.item["name"], "category": match.item["category"],
                             "image": f"v1/review/catalog-photo/{self.item_number[id(match.item)]}", "score": match.score}
                            for match in suggestion.matches[:SHOWN_MATCHES]]}


def create_review_app(queue: ReviewQueue) -> FastAPI:
    """Routes: the page at /, the products with suggestions, photos by index, and a decision per product."""
    app = FastAPIOffline(title="imgclf: catalogue review", version=__version__,
                         description="Accept or correct the suggested category of each new product.")
    page = files("imgclf.serve").joinpath("static/review.html").read_text(encoding="utf-8").replace(
        "/* base.css */", base_css())  # the style every review page shares
    reference = queue.matcher.reference

    def product(index: int) -> int:
        if not 0 <= index < len(queue.rows):
            raise HTTPException(404, f"no product {index}; there are {len(queue.rows)}")
        return index

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/v1/review/products")
    async def products() -> dict[str, Any]:
        """Every new product with its suggestion, closest items and decision; the catalogue's categories."""
        return {"categories": reference.labels, "accepted_file": str(queue.accepted), "scoring": queue.matcher.scoring,
                "products": [queue.describe(number) for number in range(len(queue.rows))]}

    @app.post("/v1/review/{index}")
    async def decide(index: int, decision: Decision) -> dict[str, Any]:
        """Accept the suggestion or correct it: the category is written to the accepted CSV."""
        category = decision.category.strip()
        try:
            parse_path(category, "category")
        except ImgclfError as error:
            raise HTTPException(422, str(error)) from None
        decided = queue.decide(product(index), category)
        return {"id": index, "category": category, "decided": decided, "of": len(queue.rows)}

    @app.get("/v1/review/photo/{index}", include_in_schema=False)
    async def photo(index: int) -> FileResponse:
        path = queue.rows[product(index)].get(IMAGE_COLUMN)
        if not path or index in queue.photo_errors:
            raise HTTPException(404, f"product {index} has no readable photo")
        return FileResponse(path)

    @app.get("/v1/review/catalog-photo/{index}", include_in_schema=False)
    async def catalog_photo(index: int) -> FileResponse:
        if not 0 <= index < len(reference.items):
            raise HTTPException(404, f"no catalogue item {index}")
        return FileResponse(reference.items[index][IMAGE_COLUMN])

    return app
