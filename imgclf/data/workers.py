"""The one worker pool for decoding: picklable jobs in forked processes, results in input order.

Pillow holds the GIL for much of small-image work, so decoding needs
processes. Fork where there is one: spawn would re-run an unguarded user
script in every worker. Jobs touch only Pillow and numpy, so torch's thread
pools in the parent do not matter to them. The decode cache and prediction
(predict, evaluate, export checks, embeddings) both decode through here.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.pool import AsyncResult
from typing import TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

AHEAD_PER_WORKER = 2  # results waiting per worker process, at most: decoding runs ahead, memory stays flat


def run_in_workers(job: Callable[[Task], Result], tasks: Sequence[Task], workers: int,
                   ahead_per_worker: int = AHEAD_PER_WORKER) -> Iterator[Result]:
    """``job(task)`` for every task, in order; in ``workers`` processes unless one (or one task) is enough."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(job, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers) as pool:
        pending: deque[AsyncResult[Result]] = deque()
        for task in tasks:
            pending.append(pool.apply_async(job, (task,)))
            if len(pending) > ahead_per_worker * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
