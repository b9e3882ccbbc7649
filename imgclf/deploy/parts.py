"""A job over many images split among torchrun's ranks: parts written atomically, joined in input order.

Every rank expands the same inputs in the same order, so the job is a list
of row ranges (*pieces*) that all ranks agree on. Rank 0 looks which pieces
a killed run already finished (a part file exists only once complete:
:func:`imgclf.files.atomic_path`) and sends the numbers of the others to
every rank (a process outside a process group, rank or not, goes by its own
look); each rank computes its :meth:`~imgclf.distributed.World.share` of
them, so a resumed job is balanced again. The parts live in a folder named
by a digest of everything the rows depend on (the model, the input files
with their sizes and modification times, the options), and each part by
its row range, so a part from other inputs, options or a different world
size is never taken for one of this job's. Rank 0 joins them after every
rank has arrived, then removes the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import distributed, paths
from imgclf.distributed import World
from imgclf.files import PATH_BYTES

log = logging.getLogger(__name__)


PART_ROWS = 4096  # images per part: what a killed rank loses at most


@dataclass(frozen=True)
class Parts:
    """Where one job's parts live, every piece of the job, and the pieces this rank computes now."""

    folder: Path
    pieces: tuple[range, ...]
    mine: tuple[range, ...]
    suffix: str
    resumed: int  # images in parts a previous run finished

    def path(self, piece: range) -> Path:
        return self.folder / f"rows-{piece.start:010d}-{piece.stop:010d}{self.suffix}"

    def all_paths(self) -> list[Path]:
        """Every part, in input order (complete once every rank has arrived)."""
        return [self.path(piece) for piece in self.pieces]

    def remove(self) -> None:
        """Delete the parts once joined; a folder beside an output also loses stale jobs' parts."""
        shutil.rmtree(self.folder.parent if self.folder.parent.name.endswith(".parts") else self.folder,
                      ignore_errors=True)


def job_digest(description: Any) -> str:
    """A short name for everything a job's rows depend on (JSON-able)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", errors=PATH_BYTES)).hexdigest()[:20]


def file_fingerprints(files: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) per file, (path, -1, -1) for one that cannot be read: edited inputs mean a new job."""
    prints = []
    for file in files:
        try:
            stat = os.stat(file)
            prints.append((os.fsdecode(file), stat.st_size, stat.st_mtime_ns))
        except OSError:
            prints.append((os.fsdecode(file), -1, -1))
    return prints


def parts_folder(out: Path | None, kind: str, digest: str) -> Path:
    """``.OUT.parts/DIGEST`` beside the output file, or the cache's ``parts/KIND-DIGEST`` when there is none.

    On several machines the folder must be one that rank 0 can read: an
    output on a shared file system.
    """
    if out is not None:
        return out.with_name(f".{out.name}.parts") / digest
    return paths.cache_dir() / "parts" / f"{kind}-{digest}"


def plan_parts(folder: Path, count: int, world: World, suffix: str, rows_per_part: int = PART_ROWS) -> Parts:
    """Cut ``count`` rows into pieces and give this rank its share of those no earlier run finished.

    Collective: every rank must call it at the same point.
    """
    size = max(1, min(rows_per_part, math.ceil(count / world.size)))
    pieces = tuple(range(start, min(start + size, count)) for start in range(0, count, size))
    probe = Parts(folder, pieces, (), suffix, 0)
    folder.mkdir(parents=True, exist_ok=True)
    # every rank looks, but rank 0's answer counts: a part another rank writes meanwhile must not change the plan
    pending = distributed.broadcast_from_main(
        [number for number, piece in enumerate(pieces) if not probe.path(piece).is_file()])
    resumed = count - sum(len(pieces[number]) for number in pending)
    if resumed and world.is_main:
        log.info(f"resuming: {resumed:,} of {count:,} images are in parts an interrupted run finished")
    mine = tuple(pieces[pending[index]] for index in world.share(len(pending)))
    return Parts(folder, pieces, mine, suffix, resumed)


def wait_for_parts(parts: Parts, world: World) -> None:
    """Block until every rank has written its parts (rank 0 says it is waiting, so a wait is never silent)."""
    if world.is_main and world.is_distributed:
        log.info(f"rank 0 finished its parts; waiting for the other {world.size - 1} rank(s)")
    distributed.wait_for_ranks()
