"""Stopping cleanly: Ctrl-C as a stop after the current step, the checkpoint callback, batches taken early."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from imgclf.engines.callbacks import Callback, FitState
from imgclf.engines.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine

log = logging.getLogger(__name__)


class Checkpoint(Callback):
    """``checkpoints/best.pt`` when an epoch is the best so far, ``last.pt`` after every epoch and on Ctrl-C."""

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine

    def on_epoch_end(self, fit: FitState) -> None:
        engine = self.engine
        assert fit.row is not None
        if fit.best_epoch == fit.row["epoch"]:
            save_checkpoint({"format": 1, "model": engine.evaluated_model().state_dict(), "epoch": fit.row["epoch"]},
                            engine.run.best_checkpoint)
        self.on_interrupt(fit)

    def on_interrupt(self, fit: FitState) -> None:
        save_checkpoint(self.engine.state(), self.engine.run.last_checkpoint)


def take(batches: Iterator[Any] | Any, count: int) -> Iterator[Any]:
    """The first ``count`` items, closing the source (and its prefetch thread) early when fewer are wanted."""
    iterator = iter(batches)
    try:
        for _ in range(count):
            try:
                yield next(iterator)
            except StopIteration:
                return
    finally:
        close = getattr(iterator, "close", None)
        if close:
            close()


@contextmanager
def deferred_interrupt(fit: FitState, distributed_run: bool = False) -> Iterator[None]:
    """The first Ctrl-C asks the loop to stop after the current step; a second one aborts at once.

    The handler only sets ``fit.signalled``; the loop's ``agree`` turns it
    into ``fit.interrupted`` after a step or an epoch, on every rank at once.

    In a distributed run a rank gets Ctrl-C from the terminal and then
    SIGTERM from torchrun, which is shutting the job down: both ask for the
    same stop after this step (torchrun kills what is left after 30 s).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if not fit.signalled:
            log.warning("stopping after this step and saving a checkpoint%s",
                        "" if distributed_run else " (Ctrl-C again to abort)")
        fit.signalled = True
        if not distributed_run:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    kinds = [signal.SIGINT, signal.SIGTERM] if distributed_run else [signal.SIGINT]
    previous = {kind: signal.signal(kind, request_stop) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
