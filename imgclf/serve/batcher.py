"""Dynamic batching: images from requests that arrive together go through the model in one call.

A model call has a fixed cost (framework dispatch, thread start-up) that a
batch of 16 shares and 16 batches of one pay 16 times. Requests put their
decoded images on a queue; one task takes the first, waits at most
``max_wait_s`` for more (up to ``max_batch`` images), runs the model in a
single worker thread (so the event loop keeps accepting and decoding) and
hands each request its rows. A bounded queue gives back-pressure: past
``max_queue`` waiting images a request is refused at once instead of
waiting until it times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class Overloaded(Exception):
    """More images are waiting than the queue allows."""


class DynamicBatcher:
    def __init__(self, predict: Callable[[np.ndarray], Any], *, max_batch: int = 32, max_wait_s: float = 0.002,
                 max_queue: int = 256, on_batch: Callable[[int], None] | None = None) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.waiting = 0  # images queued or in the running batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imgclf-model")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, pixels: np.ndarray) -> Any:
        """What ``predict`` gives for decoded images (N, H, W, C), computed in a shared batch: its rows for these
        images (probabilities (N, classes), or a ``PixelOutputs`` with the features too)."""
        assert self._queue is not None, "start() the batcher first"
        if self.waiting + len(pixels) > self.max_queue:
            raise Overloaded
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.waiting += len(pixels)
        await self._queue.put((pixels, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            count = len(jobs[0][0])
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch:
                try:
                    job = self._queue.get_nowait() if self._queue.qsize() else await asyncio.wait_for(
                        self._queue.get(), max(0.0, deadline - loop.time()))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                jobs.append(job)
                count += len(job[0])
            await self._serve(jobs, count, loop)

    async def _serve(self, jobs: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]], count: int,
                     loop: asyncio.AbstractEventLoop) -> None:
        live = [(pixels, future) for pixels, future in jobs if not future.done()]  # timed-out requests are dropped
        try:
            if not live:
                return
            batch = np.concatenate([pixels for pixels, _ in live])
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                probabilities = await loop.run_in_executor(self._executor, self.predict, batch)
            except Exception as error:  # the model failed: every waiting request learns why
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                return
            start = 0
            for pixels, future in live:
                if not future.done():
                    future.set_result(probabilities[start:start + len(pixels)])
                start += len(pixels)
        finally:
            self.waiting -= count
