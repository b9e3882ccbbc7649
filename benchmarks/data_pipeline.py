"""Data-pipeline figures: cache build (cold), cache reuse (warm), augmented batches per second.

Usage: python benchmarks/data_pipeline.py [--datasets ../shared/datasets] [--seconds 5]

Cold builds go to a fresh temporary cache folder; the JPEG files themselves
may already sit in the OS page cache, as they would on a second run by a
user. Warm reuse includes discovering the files and stat-ing every one.
Throughput is measured through :class:`imgclf.data.batches.BatchLoader`,
i.e. gather from the memory-mapped cache + augment + normalise, producing
float32 channels_last batches ready for the model.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.data.augment_presets import PRESETS
from imgclf.data.batches import BatchLoader
from imgclf.data.cache import build_cache
from imgclf.data.sources import load_source
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"
CASES = [  # (dataset folder, side in pixels, batch size, goal in images/s)
    ("cifar10", 32, 512, 20_000),
    ("flowers", 224, 64, 2_000),
]


def measure_cache(root: Path, side: int, cache_root: Path) -> dict:
    started = time.perf_counter()
    dataset = load_source(root)
    files = [item.path for item in dataset.items]
    cold = build_cache(files, (side, side), cache_root=cache_root, source=dataset.source)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    dataset = load_source(root)
    warm = build_cache([item.path for item in dataset.items], (side, side), cache_root=cache_root,
                       source=dataset.source)
    warm_seconds = time.perf_counter() - started
    assert warm.reused and not cold.reused
    return {"images": len(files), "cold_s": round(cold_seconds, 2), "warm_s": round(warm_seconds, 3),
            "broken": len(warm.errors), "cache": warm}


def measure_throughput(pixels: np.ndarray, batch_size: int, preset: str, seconds: float) -> float:
    rows = np.arange(len(pixels))
    loader = BatchLoader(pixels, rows, torch.zeros(len(rows), dtype=torch.long), batch_size, PRESETS[preset],
                         (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), drop_last=True)
    images = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch, _ in loader:
            images += batch.shape[0]
            if time.perf_counter() - started >= seconds:
                break
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per throughput figure")
    args = parser.parse_args()
    results: dict = {"machine": {"cpu_model": cpu_model(), "cpus": torch.get_num_threads(), "platform": platform.platform(),
                                 "torch": torch.__version__}, "cases": []}
    for name, side, batch_size, goal in CASES:
        root = args.datasets / name
        if not root.exists():
            print(f"skip {name}: {root} not found (benchmarks need ../shared/datasets)")
            continue
        with tempfile.TemporaryDirectory() as cache_root:
            cache = measure_cache(root, side, Path(cache_root))
            pixels = np.asarray(cache.pop("cache").pixels)
            rates = {preset: round(measure_throughput(pixels, batch_size, preset, args.seconds))
                     for preset in ("none", "light", "standard", "strong")}
        case = {"dataset": name, "side": side, "batch_size": batch_size, **cache,
                "images_per_s": rates, "goal_images_per_s": goal}
        results["cases"].append(case)
        print(f"{name} @ {side}px: {case['images']:,} images, cache cold {case['cold_s']} s, warm {case['warm_s']} s; "
              f"augmented batches/s x{batch_size}: " + ", ".join(f"{k} {v:,} img/s" for k, v in rates.items())
              + f" (goal {goal:,})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
