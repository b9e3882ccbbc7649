"""Rows of the decode cache read on demand, so memory stays flat however large the dataset grows.

The cache's ``pixels.npy`` is memory-mapped for simple random access, but
every page a memory map touches stays mapped into the process and counts
toward its resident memory: over one epoch a process that reads its share
of a shuffled order touches nearly every page of the file, so each rank of a
distributed run ends up "using" the whole array (``benchmarks/sharded_cache.py``
measures it). :class:`PixelRows` reads the rows a batch needs with
``pread`` into a fresh array instead; the kernel's page cache still serves
repeated reads, but nothing accumulates in the process. It is indexed like
the array (an integer, a slice, or an array of row numbers or a mask), so
the batch loader and the engines take it in place of the memory map, and a
rank reads only the indices it is given (:meth:`share` gives a rank its
contiguous block of rows; distributed training passes its own indices).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.data.cache import ImageCache

if TYPE_CHECKING:  # torch-free at import: training's orchestration imports this module
    from imgclf.distributed import World


class PixelRows:
    """A read-only ``(N, H, W, C)`` uint8 ``.npy`` file whose rows are read only when indexed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran_order or len(shape) < 2:
            raise ValueError(f"{self.path}: expected a C-ordered array of rows, got shape {shape}")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._descriptor: int | None = None
        self._pid = 0

    # ----------------------------------------------------------------- array-like
    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.read(np.array([int(index)]))[0]
        if isinstance(index, slice):
            return self.read(np.arange(len(self))[index])
        rows = np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self.read(rows.astype(np.int64, copy=False))

    def share(self, world: World) -> range:
        """The rows a rank reads when the dataset is cut into one contiguous block per rank."""
        return world.share(len(self))

    # ----------------------------------------------------------------- reading
    def read(self, rows: np.ndarray) -> np.ndarray:
        """A new ``(len(rows), H, W, C)`` array of the given rows, in the given order.

        Rows are read in file order, neighbours in one call, then put back in
        the order asked for.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        in_file_order = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(wanted) != 1) + 1, [len(wanted)]])
        descriptor = self._open()
        for start, stop in zip(starts[:-1], starts[1:]):  # a run of consecutive rows is one read
            self._read_into(descriptor, in_file_order[start:stop].data.cast("B"),
                            self.offset + int(wanted[start]) * self.row_bytes)
        out.reshape(len(rows), -1).view(np.uint8)[order] = in_file_order
        return out

    def _open(self) -> int:
        """The file descriptor of this process (a forked or unpickled copy opens its own)."""
        if self._descriptor is None or self._pid != os.getpid():
            self._descriptor, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._descriptor

    @staticmethod
    def _read_into(descriptor: int, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):  # a read may return less than asked for
            count = os.preadv(descriptor, [buffer[done:]], offset + done)
            if count == 0:
                raise OSError(f"unexpected end of file at byte {offset + done}")
            done += count

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_descriptor": None, "_pid": 0}

    def __del__(self) -> None:
        descriptor = getattr(self, "_descriptor", None)
        if descriptor is not None and self._pid == os.getpid():
            os.close(descriptor)


def stream_above_bytes() -> int:
    """Pixel arrays larger than a quarter of this machine's memory are read by :class:`PixelRows`.

    Below that the memory map stays: its pages are the page cache's anyway,
    and a numpy gather from pages already mapped is 3-6 times faster than
    one ``pread`` per row (``benchmarks/sharded_cache.py``).
    """
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def training_pixels(cache: ImageCache, limit: int | None = None) -> np.ndarray | PixelRows:
    """What batches are gathered from: the cache's memory map, or a :class:`PixelRows` for one too large for it."""
    if cache.pixels is None:
        raise ValueError("a facts-only cache entry has no pixels")
    if cache.pixels.nbytes <= (stream_above_bytes() if limit is None else limit):
        return cache.pixels
    return PixelRows(cache.directory / "pixels.npy")

