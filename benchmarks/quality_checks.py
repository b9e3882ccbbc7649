"""Inspect's image-quality checks on clean public photos: the share of the flowers set and of CIFAR-10 each check flags.

Usage: python benchmarks/quality_checks.py [--datasets ../shared/datasets] [--limit N]

Both sets are real photos with no planted problem, so every image a check
flags there is a cost (a photo a user is asked to look at for nothing) or a
real oddity of the set (the flowers set has a few black-and-white photos and
some with a black background). The thresholds in ``imgclf/data/quality.py``
were chosen so that each check flags a small share of these images; this
script records that share per check (``datasets``), how many images any
check flags, and where each check's score lies on the clean photos (``scores``:
percentiles 1, 5, 50, 95, 99 beside the threshold), through the same
``imgclf.inspect`` a user runs (every image: flowers train and val, 3,670;
CIFAR-10 train and test, 60,000). ``--limit`` checks the first N images of
each (a quick try). The share of planted problems the checks find is
``benchmarks/label_noise.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

import imgclf
from imgclf.data.cache import build_cache
from imgclf.data.quality import CHECKS, quality_scores
from imgclf.data.sources import load_source
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "quality_checks.json"
PERCENTILES = (1, 5, 50, 95, 99)


def limited_source(root: Path, limit: int | None, folder: Path) -> Path:
    """``root`` itself, or a CSV manifest of its first ``limit`` images (spread over its classes) in ``folder``."""
    if limit is None:
        return root
    items = load_source(root).items
    chosen = items[:: max(1, len(items) // limit)][:limit]
    manifest = folder / f"{root.name}-{limit}.csv"
    manifest.write_text("path,label\n" + "".join(f"{item.path},{item.label}\n" for item in chosen))
    return manifest


def measure(source: Path, out: Path) -> tuple[dict, dict]:
    """(shares flagged per check, score percentiles per check) of ``imgclf.inspect`` on ``source``."""
    result = imgclf.inspect(source, out=out)
    quality = result.report.quality or {}
    images = sum(result.report.split_totals.values())
    issues = quality.get("issues", [])
    shares = {"images": images, "any_check": round(len({issue["path"] for issue in issues}) / images, 4)}
    shares.update({check["kind"]: round(check["images"] / images, 4) for check in quality.get("checks", [])})
    shares["notes"] = "; ".join(quality.get("notes", []))
    dataset = load_source(source)
    cache = build_cache([item.path for item in dataset.items], size=None, source=dataset.source)  # inspect's entry
    assert cache.quality is not None and cache.reused
    scores = quality_scores(cache.quality, cache.widths, cache.heights)
    spread = {}
    for check in CHECKS:
        values = scores[check.kind][~np.isnan(scores[check.kind])]
        spread[check.kind] = {"threshold": check.threshold, "flagged_when": "below" if check.below else "above",
                              **{f"p{p}": round(float(np.percentile(values, p)), 4) for p in PERCENTILES}}
    return shares, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    results: dict = {"machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count()}, "datasets": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("flowers", "cifar10"):
            source = limited_source(args.datasets / name, args.limit, Path(folder))
            shares, spread = measure(source, Path(folder) / f"inspect-{name}")
            results["datasets"][name] = shares
            results[f"scores_{name}"] = spread
            print(name, json.dumps(shares), flush=True)
    if args.limit is None:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
