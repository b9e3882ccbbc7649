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

import numpy as np

from imgclf.data.hierarchy import Hierarchy, label_tree
from imgclf.deploy.bundle import BundleInfo
from imgclf.deploy.classifier import PixelOutputs
from imgclf.serve.batcher import DynamicBatcher
from imgclf.watch.live import LiveMonitor

DRAIN_POLL_S = 0.05


@dataclass
class LoadedModel:
    """One loaded version: its classifier, runtime, content id (None when unknown), batcher, category tree and
    the live monitor of its latest answers (against its own reference)."""

    classifier: Any
    runtime: str
    version: str | None
    batcher: DynamicBatcher
    hierarchy: Hierarchy | None  # answers of a category model carry the path
    live: LiveMonitor  # the latest answers, for the monitor's gauges on /metrics
    holders: int = 0  # requests that started on this model and have not answered yet

    @classmethod
    def build(cls, classifier: Any, runtime: str, version: str | None, batching: dict[str, float],
              on_batch: Callable[[int], None] | None = None, logged: bool = False) -> LoadedModel:
        """A model with a batcher of its own (not started: :meth:`DynamicBatcher.start` needs the event loop).

        The batcher's call gives the pooled features too when the answers are
        ``logged`` or the bundle has a monitoring reference (drift and novelty gauges).
        """
        live = LiveMonitor.of(getattr(classifier, "directory", None), list(classifier.classes))
        call = _with_features(classifier) if logged or live.reference is not None else classifier.predict_pixels
        batcher = DynamicBatcher(call, max_batch=int(batching["max_batch"]),
                                 max_wait_s=batching["max_wait_ms"] / 1000, max_queue=int(batching["max_queue"]),
                                 on_batch=on_batch)
        hierarchy = None if classifier.info.multilabel else label_tree(classifier.classes)
        return cls(classifier, runtime, version, batcher, hierarchy, live)

    def start(self) -> None:
        """Start answering (on the event loop) and watching the answers."""
        self.batcher.start()
        self.live.start()

    async def stop(self) -> None:
        self.live.stop()
        await self.batcher.stop()

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
        await self.stop()


def _with_features(classifier: Any) -> Callable[[np.ndarray], PixelOutputs]:
    """The batcher's model call that gives probabilities and pooled features at once (no features: None)."""
    both = getattr(classifier, "predict_pixels_with_features", None)
    return both if both is not None else lambda pixels: PixelOutputs(classifier.predict_pixels(pixels), None)
