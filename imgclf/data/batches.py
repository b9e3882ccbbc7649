"""Feed shuffled, augmented, normalised batches from a decoded cache.

The cache is already uint8 pixels in memory-mapped rows, so a batch is one
gather plus the batched augmentation of :mod:`imgclf.data.augment`. The next
batch is prepared in a background thread while the model works on the
current one (torch releases the GIL in its kernels), and moved to the
device from pinned memory when that device is a GPU.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from imgclf.data.augment import augment_batch
from imgclf.data.augment_presets import AugmentConfig
from imgclf.distributed import ALONE, World

PREFETCH_BATCHES = 2


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True,
                  order: np.ndarray | None = None) -> list[np.ndarray]:
    """Positions of each batch of pass ``epoch`` over ``count`` rows: one seeded order per (seed, epoch).

    ``order`` replaces the shuffled order (a weighted resample); ``drop_last``
    drops a ragged last batch. The image loader and the tail's activation
    loader share it, so both see the rows in the same order.
    """
    if order is None:
        order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


@functools.lru_cache(maxsize=8)  # asked once per batch: the pass's answer is drawn once (callers only read it)
def view_rows(count: int, views: int, seed: int, epoch: int) -> np.ndarray:
    """Which of ``views`` views each of ``count`` rows is seen in during pass ``epoch``.

    Each row starts in a random view and moves on to the next one every
    epoch, so in every ``views`` epochs it is seen in each view once. With
    two views (the image, its mirror) that is airbench's alternating flip:
    a fixed random half starts mirrored and every row flips each epoch.
    The tail (:mod:`imgclf.engines.tail`) cycles kept activations of more
    views (zoomed ones) by the same rule.
    """
    draws = np.random.default_rng([seed, 0xF11B]).random(count)
    rows = (views - 1 - np.floor(draws * views).astype(np.int64) + epoch) % views
    rows.flags.writeable = False  # shared by the cache: read, never changed
    return rows


def mirrored_rows(count: int, seed: int, epoch: int) -> np.ndarray:
    """airbench's alternating flip: which of ``count`` rows are mirrored in pass ``epoch`` (view 1 of 2)."""
    return view_rows(count, 2, seed, epoch) == 1


class BatchLoader:
    """Iterate over ``(images, targets)`` batches of some rows of a pixel array.

    Each pass (epoch) reshuffles with a seed derived from ``seed`` and the
    epoch number, and every batch augments with a generator seeded by
    (seed, epoch, batch), so a run resumed at any batch sees exactly the
    batches of an uninterrupted one.

    ``sample_weights`` (one per row) switches shuffling to sampling with
    replacement in proportion to the weights: that is how balanced sampling
    shows rare classes as often as common ones.

    ``world`` (one rank of a distributed run) makes every batch this rank's
    share (:meth:`World.share`) of the global batch: the order is the same on
    every rank, so the ranks together see each global batch exactly once and
    the number of batches (optimiser steps) is the one-process number. Each
    rank augments its share with its own generator (seed, epoch, batch, rank).
    """

    def __init__(
        self,
        pixels: np.ndarray,
        rows: np.ndarray,
        targets: torch.Tensor,
        batch_size: int,
        augment: AugmentConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sample_weights: np.ndarray | None = None,
        world: World = ALONE,
    ) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.pixels = pixels
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = targets
        self.batch_size = batch_size
        self.augment = augment
        self.mean = mean
        self.std = std
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.device = torch.device(device)
        self.world = world
        self.sample_weights = None
        if sample_weights is not None:
            weights = np.asarray(sample_weights, dtype=np.float64)
            if weights.shape != self.rows.shape or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("sample_weights must be one non-negative weight per row, not all zero")
            self.sample_weights = weights / weights.sum()
        self.epoch = 0
        self.start_batch = 0
        self._memo: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose which epoch the next pass is, and the batch it starts at (to resume mid-epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, first = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        batches = self._epoch_batches(epoch)
        yield from _prefetched(self._make_batch(batches[index], epoch, index)
                               for index in range(first, len(batches)))

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of pass ``epoch``, exactly as iterating would give it (for index-based feeders)."""
        memo = self._memo  # one pass's order, computed once, not once per batch
        if memo is None or memo[0] != epoch:
            memo = self._memo = (epoch, self._epoch_batches(epoch))
        return self._make_batch(memo[1][index], epoch, index)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The row positions of every batch of pass ``epoch`` (reshuffled or resampled per epoch)."""
        order = None
        if self.sample_weights is not None:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.choice(len(self.rows), size=len(self.rows), p=self.sample_weights)
        batches = epoch_batches(len(self.rows), self.batch_size, self.seed, epoch, self.shuffle, self.drop_last, order)
        if self.world.is_distributed:
            batches = [batch[(mine := self.world.share(len(batch))).start:mine.stop] for batch in batches]
        return batches

    def _generator(self, epoch: int, batch: int) -> torch.Generator:
        parts = [self.seed, epoch, batch] + ([self.world.rank] if self.world.is_distributed else [])
        seed = int(np.random.SeedSequence(parts).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def _make_batch(self, positions: np.ndarray, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of pass ``epoch``: the rows at ``positions``, augmented with that batch's generator."""
        pixels = torch.from_numpy(np.ascontiguousarray(self.pixels[self.rows[positions]]))
        targets = self.targets[torch.from_numpy(positions)]
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
        hflip = None
        if self.augment.alternate_flip:
            hflip = torch.from_numpy(mirrored_rows(len(self.rows), self.seed, epoch)[positions])
        images = augment_batch(pixels, self.augment, self._generator(epoch, index), self.mean, self.std, hflip=hflip)
        return images, targets


def _prefetched(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Produce batches in a background thread, at most ``PREFETCH_BATCHES`` ahead."""
    slots: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    finished = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                slots.put(batch)
            slots.put(finished)
        except BaseException as error:  # handed to the consumer, raised there
            slots.put(error)

    worker = threading.Thread(target=produce, daemon=True, name="imgclf-batches")
    worker.start()
    try:
        while True:
            batch = slots.get()
            if batch is finished:
                return
            if isinstance(batch, BaseException):
                raise batch
            yield batch
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
