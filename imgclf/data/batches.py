"""Feed shuffled, augmented, normalised batches from a decoded cache.

The cache is already uint8 pixels in memory-mapped rows, so a batch is one
gather plus the batched augmentation of :mod:`imgclf.data.augment`. The next
batch is prepared in a background thread while the model works on the
current one (torch releases the GIL in its kernels), and moved to the
device from pinned memory when that device is a GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from imgclf.data.augment import augment_batch
from imgclf.data.augment_presets import AugmentConfig

PREFETCH_BATCHES = 2


class BatchLoader:
    """Iterate over ``(images, targets)`` batches of some rows of a pixel array.

    Each pass (epoch) reshuffles with a seed derived from ``seed`` and the
    epoch number, so epoch *k* of a resumed run sees exactly the batches of
    an uninterrupted one.
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
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's shuffle and augmentation the next pass uses."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.arange(len(self.rows))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        starts = range(0, len(order), self.batch_size)
        batches = [order[start:start + self.batch_size] for start in starts]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        self.epoch += 1
        yield from _prefetched(self._make_batch(positions, generator) for positions in batches)

    def _make_batch(self, positions: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.ascontiguousarray(self.pixels[self.rows[positions]]))
        targets = self.targets[torch.from_numpy(positions)]
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
        images = augment_batch(pixels, self.augment, generator, self.mean, self.std)
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
