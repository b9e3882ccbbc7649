"""The version a server answers with: a loaded classifier with its own batcher, held by each request to its answer.

A reload (:mod:`imgclf.serve.reload`) builds a new one beside the old,
switches ``Served.model`` in one assignment on the event loop, and stops the
old one's batcher once no request holds it: requests in flight finish on
the old model, requests that start after the switch go to the new one, and
none is refused or cut off in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgclf.data.hierarchy import Hierarchy, label_tree
from imgclf.deploy.bundle import BundleInfo
from imgclf.serve.batcher import DynamicBatcher

DRAIN_POLL_S = 0.05


@dataclass
class LoadedModel:
    """One loaded version: its classifier, runtime, content id (None when unknown), batcher and category tree."""

    classifier: Any
    runtime: str
    version: str | None
    batcher: DynamicBatcher
    hierarchy: Hierarchy | None  # answers of a category model carry the path
    holders: int = 0  # requests that started on this model and have not answered yet

    @classmethod
    def build(cls, classifier: Any, runtime: str, version: str | None, batching: dict[str, float],
              on_batch: Callable[[int], None] | None = None) -> LoadedModel:
        """A model with a batcher of its own (not started: :meth:`DynamicBatcher.start` needs the event loop)."""
        batcher = DynamicBatcher(classifier.predict_pixels, max_batch=int(batching["max_batch"]),
                                 max_wait_s=batching["max_wait_ms"] / 1000, max_queue=int(batching["max_queue"]),
                                 on_batch=on_batch)
        hierarchy = None if classifier.info.multilabel else label_tree(classifier.classes)
        return cls(classifier, runtime, version, batcher, hierarchy)

    @property
    def info(self) -> BundleInfo:
        return self.classifier.info

    async def drain(self, within_s: float) -> None:
        """Stop the batcher once no request holds this model; after ``within_s`` (past every request's --timeout)
        regardless."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.holders and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await self.batcher.stop()
