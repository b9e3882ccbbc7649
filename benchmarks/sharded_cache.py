"""Reading a decode cache of 1,000,000 small images for one epoch with 2 ranks: speed and peak memory per rank.

A synthetic cache (random 32x32 RGB rows in a ``pixels.npy``, as
``imgclf.data.cache`` writes it) is read by two processes at once, each taking
its share of every batch of one seeded shuffled order (as distributed
training reads), 256 images a batch, the way each reader does it:

- ``memmap``: the cache's memory map, gathered with numpy (what ``np.load(mmap_mode="r")`` gives);
- ``memmap+madvise``: the same, dropping the mapped pages after every batch (``MADV_DONTNEED``);
- ``pread``: :class:`imgclf.data.shards.PixelRows`, explicit reads into a fresh array.

For the first 250k, 500k and all 1M rows it prints images/s and peak
resident memory per rank (and its growth over the process before reading),
and writes ``benchmarks/results/sharded_cache.json``. The file is in the page
cache after it is written, so the speeds are of a warm cache. Run under
``flock /tmp/imgclf-bench.lock``; the cache is deleted at the end unless
``--keep``.

    python benchmarks/sharded_cache.py [--rows 1000000] [--side 32] [--dir /tmp/sharded-cache]
"""

from __future__ import annotations

import argparse
import json
import mmap
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "sharded_cache.json"
BATCH = 256
RANKS = 2
METHODS = ("memmap", "memmap+madvise", "pread")


def write_cache(path: Path, rows: int, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, side, side, 3))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 50_000):
        stop = min(start + 50_000, rows)
        pixels[start:stop] = rng.integers(0, 256, (stop - start, side, side, 3), dtype=np.uint8)
    pixels.flush()
    del pixels


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(path: Path, method: str, count: int, rank: int) -> dict:
    """One rank's epoch: its share of each global batch of a shuffled order of the first ``count`` rows."""
    from imgclf.data.shards import PixelRows
    from imgclf.distributed import World

    world = World(rank, RANKS)
    memory_map = np.load(path, mmap_mode="r")
    reader = PixelRows(path) if method == "pread" else memory_map
    order = np.random.default_rng(0).permutation(count)
    global_batch = BATCH * RANKS
    before = rss_mb("VmRSS")
    started, images, checksum = time.perf_counter(), 0, 0
    for start in range(0, count, global_batch):
        batch = order[start:start + global_batch]
        mine = batch[world.share(len(batch)).start:world.share(len(batch)).stop]
        pixels = np.ascontiguousarray(reader[mine])
        checksum += int(pixels[:, 0, 0, 0].sum())  # use the pixels, so nothing is skipped
        images += len(mine)
        if method == "memmap+madvise":
            memory_map._mmap.madvise(mmap.MADV_DONTNEED)  # noqa: SLF001 (numpy keeps its mmap there)
    seconds = time.perf_counter() - started
    peak = rss_mb("VmHWM")  # not ru_maxrss: Linux carries that over from the parent through fork and exec
    return {"rank": rank, "images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds),
            "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - before, 1), "checksum": checksum}


def run_epoch(path: Path, method: str, count: int) -> list[dict]:
    ranks = [subprocess.Popen([sys.executable, __file__, "--worker", str(rank), "--method", method,
                               "--count", str(count), "--dir", str(path.parent)], stdout=subprocess.PIPE, text=True)
             for rank in range(RANKS)]
    results = []
    for process in ranks:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"a rank failed ({process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sharded-cache"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; results of others are kept")
    parser.add_argument("--worker", type=int, default=None)
    parser.add_argument("--method", default="pread")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    path = args.dir / "pixels.npy"
    if args.worker is not None:
        print(json.dumps(worker(path, args.method, args.count, args.worker)))
        return
    needed = args.rows * args.side * args.side * 3
    free = shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free
    if free < 2 * needed:
        raise SystemExit(f"{args.dir}: {free / 1e9:.1f} GB free, the cache needs {needed / 1e9:.1f} GB (twice that free)")
    started = time.perf_counter()
    write_cache(path, args.rows, args.side)
    print(f"wrote {args.rows:,} images of {args.side}x{args.side} RGB ({needed / 1e9:.2f} GB) in "
          f"{time.perf_counter() - started:.0f} s")
    counts = [args.rows // 4, args.rows // 2, args.rows]
    table = []
    try:
        for method in args.methods.split(","):
            for count in counts:
                ranks = run_epoch(path, method, count)
                table.append({"method": method, "images": count, "ranks": ranks})
                print(f"{method:>15} {count:>9,} images: " + "  ".join(
                    f"rank {r['rank']}: {r['images_per_s']:>7,} img/s, peak RSS {r['peak_rss_mb']:>7.0f} MB "
                    f"(+{r['rss_growth_mb']:.0f} MB while reading)" for r in ranks))
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    measured = {row["method"] for row in table}
    kept = [row for row in (json.loads(RESULTS.read_text())["results"] if RESULTS.exists() else [])
            if row["method"] not in measured and row["method"] in METHODS]
    table = sorted(kept + table, key=lambda row: (METHODS.index(row["method"]), row["images"]))
    RESULTS.write_text(json.dumps({"rows": args.rows, "side": args.side, "batch_per_rank": BATCH, "ranks": RANKS,
                                   "machine": f"{platform.machine()}, 2 shared cores", "page_cache": "warm",
                                   "peak_rss": "VmHWM of each rank's process", "results": table}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
