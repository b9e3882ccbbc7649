"""What inspect's quality checks and outliers cost: the decode pass with and without the quality measures, and embedding.

Usage: flock /tmp/imgclf-bench.lock python benchmarks/inspect_checks.py [--datasets ../shared/datasets] [--limit N]

For the flowers set (3,670 photos) and CIFAR-10 (60,000 images), in one
process each (the cost per image, free of the worker pool's start-up and of
other processes): every file decoded as ``inspect`` decodes it (facts only,
``decode_file(path)``) without and with the quality measures
(``quality=True``), in images/s, and the added share; then ``imgclf.inspect``
as a user runs it (the worker pool, duplicates, the report and its pictures)
from an empty cache, and again with the cache (the checks are kept with it,
so a second inspect costs a ``stat`` per file). For flowers also
``inspect --outliers`` with an empty embedding store and with a full one:
embedding every image is the outliers' cost, counted apart. Timings mean
something only on a quiet machine (hence the lock).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from quality_checks import limited_source

import imgclf
from imgclf.data.decode import decode_file
from imgclf.data.sources import load_source
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "inspect_checks.json"


def decode_rate(paths: list[Path], quality: bool) -> float:
    """Images/s of decoding ``paths`` as inspect does, in this one process."""
    started = time.perf_counter()
    for path in paths:
        decode_file(path, quality=quality)
    return len(paths) / (time.perf_counter() - started)


def timed_inspect(data: Path, out: Path, **options: object) -> float:
    started = time.perf_counter()
    imgclf.inspect(data, out=out, **options)
    return round(time.perf_counter() - started, 2)


def measure(root: Path, limit: int | None, scratch: Path, outliers: bool) -> dict[str, float]:
    data = limited_source(root, limit, scratch)
    paths = [item.path for item in load_source(data).items]
    decode_rate(paths[:50], quality=True)  # imports and first-use costs out of the way
    plain, checked = decode_rate(paths, quality=False), decode_rate(paths, quality=True)
    record = {"images": len(paths), "decode_images_per_s": round(plain, 1),
              "decode_with_checks_images_per_s": round(checked, 1), "checks_added_share": round(plain / checked - 1, 4)}
    os.environ["IMGCLF_HOME"] = str(scratch / f"home-{root.name}")  # an empty cache and embedding store
    record["inspect_cold_s"] = timed_inspect(data, scratch / "report")
    record["inspect_cached_s"] = timed_inspect(data, scratch / "report")
    if outliers:
        record["inspect_outliers_embedding_cold_s"] = timed_inspect(data, scratch / "report", outliers=True)
        record["inspect_outliers_embeddings_stored_s"] = timed_inspect(data, scratch / "report", outliers=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N files of each set (a quick try)")
    args = parser.parse_args()
    results: dict = {"machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count()}, "cases": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("flowers", "cifar10"):
            results["cases"][name] = measure(args.datasets / name, args.limit, Path(folder), outliers=name == "flowers")
            print(name, json.dumps(results["cases"][name]), flush=True)
    if args.limit is None:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
