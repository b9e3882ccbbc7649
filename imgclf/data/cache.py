"""Decode every image once, keep the result on disk, reuse it for every later run.

JPEG decoding is the slowest step of a CPU input pipeline. A cache entry is a
uint8 array of shape (N, H, W, C) saved as ``.npy`` and memory-mapped, plus
per-file facts (original size, mode, content hash, decode error). It is keyed
by the file list with each file's size and modification time, the target
size and the resize policy, so a changed, added or removed file means a new
entry, and a repeated run costs one ``stat`` per file.

With ``size=None`` an entry holds only the facts: that is what ``inspect``
needs, and it still decodes every file fully so truncated ones are caught;
it also keeps each image's quality measures (:mod:`imgclf.data.quality`),
taken from that same decode.

Entries are written to a temporary folder and renamed into place, so an
interrupted build never leaves an entry that looks complete. Building a new
entry for the same folder, size and policy deletes the one it replaces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from imgclf import paths
from imgclf.console import progress_bar
from imgclf.data.decode import DEFAULT_MAX_PIXELS, ResizePolicy, decode_file
from imgclf.data.quality import MEASURES, QUALITY_VERSION
from imgclf.data.workers import run_in_workers
from imgclf.errors import one_line

log = logging.getLogger(__name__)


CACHE_VERSION = 1
# Below this many files a process pool costs more to start than it saves.
PARALLEL_THRESHOLD = 256
CHUNKS_AHEAD_PER_WORKER = 8  # chunks are small and their pixels go to the memmap: keep every worker busy


@dataclass
class ImageCache:
    """A decoded dataset: pixels (when a size was asked for) and per-file facts."""

    directory: Path
    paths: list[Path]
    size: tuple[int, int] | None
    pixels: np.ndarray | None  # memory-mapped (N, H, W, C) uint8; rows of broken files are zero
    widths: np.ndarray
    heights: np.ndarray
    modes: np.ndarray
    digests: np.ndarray
    errors: dict[int, str]
    reused: bool
    seconds: float
    quality: np.ndarray | None = None  # (N, len(quality.MEASURES)) float32 for a facts-only entry; NaN rows: broken

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the files that decoded."""
        mask = np.ones(len(self.paths), dtype=bool)
        mask[list(self.errors)] = False
        return mask

    def broken(self) -> list[tuple[Path, str]]:
        """(path, reason) of every file that could not be decoded, in dataset order."""
        return [(self.paths[index], self.errors[index]) for index in sorted(self.errors)]


def build_cache(
    files: Sequence[Path],
    size: tuple[int, int] | None = None,
    policy: ResizePolicy = "squash",
    grayscale: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_root: Path | None = None,
    workers: int | None = None,
    source: str = "",
    description: str = "Decoding images",
) -> ImageCache:
    """Return the cache entry for ``files``, decoding them only if no valid entry exists.

    ``source`` names where the files came from (a folder or CSV); a new entry
    for the same source and settings replaces the old one on disk.
    """
    started = time.perf_counter()
    files = [Path(file) for file in files]
    cache_root = cache_root or paths.cache_dir()
    settings = {"version": CACHE_VERSION, "size": list(size) if size else None, "policy": policy,
                "grayscale": grayscale, "max_pixels": max_pixels,
                **({} if size else {"quality": QUALITY_VERSION})}  # facts-only entries carry the quality measures
    key = _digest([settings, _fingerprints(files)])
    directory = cache_root / key
    if (directory / "index.json").exists():
        os.utime(directory / "index.json")  # last-used time, for anyone pruning by age
        try:
            return _load(directory, files, size, started)
        except (OSError, ValueError, KeyError) as error:  # damaged or tampered with (never unpickled): decode again
            log.warning(f"the decode cache entry {directory} is damaged ({one_line(error)}); decoding again")
            shutil.rmtree(directory, ignore_errors=True)
    family = _digest([settings, source]) if source else ""
    _write(directory, files, size, policy, grayscale, max_pixels, workers, description, family)
    if family:
        _remove_superseded(cache_root, family, keep=directory)
    return _load(directory, files, size, started, reused=False)


def _fingerprints(files: list[Path]) -> list[tuple[str, int, int]]:
    prints = []
    for file in files:
        try:
            stat = file.stat()
            prints.append((str(file), stat.st_size, stat.st_mtime_ns))
        except OSError:
            prints.append((str(file), -1, -1))
    return prints


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:32]


def _write(directory: Path, files: list[Path], size: tuple[int, int] | None, policy: ResizePolicy,
           grayscale: bool, max_pixels: int, workers: int | None, description: str, family: str) -> None:
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if size is not None:
            channels = 1 if grayscale else 3
            np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8,
                                      shape=(len(files), *size, channels)).flush()
        job = _DecodeJob(tmp / "pixels.npy" if size else None, size, policy, grayscale, max_pixels)
        facts = _decode_all(job, files, workers, description)
        np.savez(tmp / "meta.npz",
                 widths=np.array([f.width for f in facts], dtype=np.int32),
                 heights=np.array([f.height for f in facts], dtype=np.int32),
                 modes=np.array([f.mode for f in facts], dtype="U8"),
                 digests=np.array([f.digest for f in facts], dtype="U32"),
                 **({} if size else {"quality": np.array([f.quality for f in facts], dtype=np.float32).reshape(-1, len(MEASURES))}))
        errors = {str(f.position): f.error for f in facts if f.error}
        (tmp / "errors.json").write_text(json.dumps(errors))
        index = {"version": CACHE_VERSION, "family": family, "files": len(files),
                 "size": list(size) if size else None, "policy": policy, "grayscale": grayscale}
        (tmp / "index.json").write_text(json.dumps(index))
        try:
            os.rename(tmp, directory)
        except OSError:
            # another process finished the same entry first: theirs is as good as ours
            if not (directory / "index.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Facts(NamedTuple):
    """What a worker sends back for one file (the pixels go straight into the memmap)."""

    position: int  # in the file list (not `index`: that is tuple.index)
    width: int
    height: int
    mode: str
    digest: str
    error: str
    quality: tuple[float, ...]  # the quality measures of a facts-only decode (NaN when broken); () otherwise


@dataclass(frozen=True)
class _DecodeJob:
    """Everything a worker process needs, picklable."""

    pixels_path: Path | None
    size: tuple[int, int] | None
    policy: ResizePolicy
    grayscale: bool
    max_pixels: int

    def run(self, chunk: list[tuple[int, str]]) -> list[_Facts]:
        pixels = np.load(self.pixels_path, mmap_mode="r+") if self.pixels_path else None
        facts = []
        for index, file in chunk:
            decoded = decode_file(Path(file), self.size, self.policy, self.grayscale, self.max_pixels,
                                  quality=self.size is None)
            if pixels is not None and decoded.pixels is not None:
                pixels[index] = decoded.pixels
            measures = () if self.size is not None else (
                tuple(decoded.quality.tolist()) if decoded.quality is not None else (float("nan"),) * len(MEASURES))
            facts.append(_Facts(index, decoded.width, decoded.height, decoded.mode, decoded.digest, decoded.error,
                                measures))
        if pixels is not None:
            pixels.flush()
        return facts


def _decode_all(job: _DecodeJob, files: list[Path], workers: int | None, description: str) -> list[_Facts]:
    """Decode in the worker processes of :mod:`imgclf.data.workers`, each chunk's pixels straight into the memmap."""
    workers = workers or os.cpu_count() or 1
    if len(files) < PARALLEL_THRESHOLD:
        workers = 1
    indexed = [(index, str(file)) for index, file in enumerate(files)]
    chunk_size = max(1, min(512, len(files) // (workers * 8) or 1))
    chunks = [indexed[start:start + chunk_size] for start in range(0, len(indexed), chunk_size)]
    facts: list[_Facts] = []
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(files))
        for result in run_in_workers(job.run, chunks, workers, ahead_per_worker=CHUNKS_AHEAD_PER_WORKER):
            facts += result
            bar.advance(task, len(result))
    facts.sort()
    return facts


def _load(directory: Path, files: list[Path], size: tuple[int, int] | None, started: float,
          reused: bool = True) -> ImageCache:
    meta = np.load(directory / "meta.npz", allow_pickle=False)
    errors = {int(index): reason for index, reason in json.loads((directory / "errors.json").read_text()).items()}
    pixels = np.load(directory / "pixels.npy", mmap_mode="r", allow_pickle=False) if size else None
    return ImageCache(directory=directory, paths=files, size=size, pixels=pixels,
                      widths=meta["widths"], heights=meta["heights"], modes=meta["modes"],
                      digests=meta["digests"], errors=errors, reused=reused,
                      seconds=time.perf_counter() - started, quality=meta["quality"] if size is None else None)


def _remove_superseded(cache_root: Path, family: str, keep: Path) -> None:
    """Delete older entries for the same folder and settings: they can never be hit again
    unless the files change back, and caches of large datasets are big."""
    for index_file in cache_root.glob("*/index.json"):
        entry = index_file.parent
        if entry == keep:
            continue
        try:
            if json.loads(index_file.read_text()).get("family") == family:
                shutil.rmtree(entry, ignore_errors=True)
        except (OSError, ValueError):
            continue
