"""Copies of logged images (``--log-images DIR``), stored once per content hash, the oldest dropped past a size cap.

A served image is gone once answered; the review queue and ``update --add``
need the picture itself. Each copy is named by its SHA-256
(``ab/ab12...ef.jpg``), so the same photo sent a thousand times is one
file; when the folder grows past its cap the copies stored (or sent again)
longest ago are deleted first. A log row keeps the path it was given, so a
row older than its dropped copy names a missing file (the review queue
says so).
"""

from __future__ import annotations

import heapq
import os
import time
from pathlib import Path

from imgclf.files import write_bytes_atomic

SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


class ImageStore:
    """A folder of images named by content hash, at most ``max_bytes`` in all; used by the log's one writer thread."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._ages: list[tuple[float, str]] = []  # (when stored or sent again, path): a heap, oldest first
        self._sizes: dict[str, int] = {}
        self._stamps: dict[str, float] = {}
        self.total = 0
        for path in directory.glob("*/*") if directory.is_dir() else []:
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                self._remember(str(path), stat.st_size, stat.st_mtime)

    def path_of(self, sha256: str, image_format: str | None) -> Path:
        return self.directory / sha256[:2] / f"{sha256}{SUFFIXES.get(image_format or '', '.img')}"

    def store(self, data: bytes, sha256: str, image_format: str | None) -> Path | None:
        """The copy's path (written now, or already there); None when the image alone is over the cap."""
        if len(data) > self.max_bytes:
            return None
        path = self.path_of(sha256, image_format)
        now = time.time()
        if str(path) in self._sizes and path.is_file():
            os.utime(path, (now, now))  # sent again: it counts as new, and is kept longer
            self._remember(str(path), len(data), now)
            return path
        write_bytes_atomic(path, data)
        self._remember(str(path), len(data), now)
        self._drop_oldest()
        return path

    def _remember(self, path: str, size: int, stamp: float) -> None:
        self.total += size - self._sizes.get(path, 0)
        self._sizes[path], self._stamps[path] = size, stamp
        heapq.heappush(self._ages, (stamp, path))

    def _drop_oldest(self) -> None:
        while self.total > self.max_bytes and self._ages:
            stamp, path = heapq.heappop(self._ages)
            if self._stamps.get(path) != stamp:  # an older entry of a copy sent again since
                continue
            Path(path).unlink(missing_ok=True)
            self.total -= self._sizes.pop(path)
            del self._stamps[path]
