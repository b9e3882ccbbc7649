"""What more time buys: ``imgclf train DATA --quality Q`` for each quality and seed, from cold caches.

Usage: python benchmarks/quality.py [--data ../shared/datasets/flowers] [--name flowers]
                                    [--qualities default,high,best] [--seeds 0,1,2] [--results PATH]

Each run is ``imgclf.train(DATA, quality=Q, seed=S)``, one after another
in this process: the plan the planner chose (from forward passes it timed
on this machine), the wall seconds of the whole call (report included)
against the quality's budget, and the accuracy on the data's val split.
Each quality has its own ``IMGCLF_HOME``, empty for its first seed (cold:
nothing decoded or embedded before; the OS page cache may hold the JPEGs):
that run's wall time is the one judged against the budget. Its later seeds
find the decoded images and the frozen trunks' activations there (they do
not depend on the seed), so they cost the tail epochs and the reports, and
measure the seed's effect on accuracy; their ``caches`` say ``warm``. The
accuracies are on the data's val split (the planner's figures are flowers val
too: the runs pick their epoch and the ensembles their weights on it, as
every imgclf run does). ``summary`` gives each quality's mean and spread
over the seeds and its gain over ``default`` (the same seeds). Records are
merged into ``benchmarks/results/quality.json`` under ``--name`` (one per
dataset), with the CPU model.

The second dataset, ``cifar-sub``, is made by ``--make-cifar-sub FOLDER``:
300 training and 100 val images of each CIFAR-10 class (the first files of
``cifar10/train`` and ``cifar10/test`` by name), upscaled to 96 px JPEGs so
the photo planner takes it (it leaves images of 64 px and less to the
small-image recipe). Ten classes of 32 px sources with look-alike pairs
(cat/dog, automobile/truck, deer/horse) are a harder task than five flower
species, for the same trunks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

import imgclf
from imgclf.config import QUALITY_BUDGETS, parse_duration
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "quality.json"
RUNS = Path(os.environ.get("IMGCLF_BENCH_RUNS", "runs/benchmarks"))
CIFAR_SUB = {"train": ("train", 300), "val": ("test", 100)}  # our split: (CIFAR-10's folder, images per class)
CIFAR_SIDE = 96


def run(data: Path, name: str, quality: str, seed: int, home: Path, cold: bool) -> dict[str, Any]:
    """One ``--quality`` run with ``home`` as IMGCLF_HOME: its plan, wall seconds against the budget, val accuracy."""
    previous = os.environ.get("IMGCLF_HOME")
    os.environ["IMGCLF_HOME"] = str(home)
    started = time.perf_counter()
    try:
        result = imgclf.train(data, out=RUNS / f"quality-{name}-{quality}-seed{seed}", overwrite=True,
                              quality=quality, seed=seed)
    finally:
        if previous is None:
            os.environ.pop("IMGCLF_HOME")
        else:
            os.environ["IMGCLF_HOME"] = previous
    wall = time.perf_counter() - started
    config = result.config  # type: ignore[union-attr]  # a training result, not a dry run
    budget = parse_duration(QUALITY_BUDGETS[quality])
    record = {"quality": quality, "seed": seed, "caches": "cold" if cold else "warm", "budget_seconds": budget,
              "plan": config.ensemble or f"{config.model}@{config.image_size} ({config.strategy})",
              "wall_seconds": round(wall, 1), "within_budget": wall <= budget,
              "val_accuracy": result.metrics["val_accuracy"]}  # type: ignore[union-attr]
    print(json.dumps(record), flush=True)
    return record


def summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each quality's mean accuracy and wall time over its seeds, and its gain over default on the same seeds."""
    by_quality: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_quality.setdefault(record["quality"], []).append(record)
    default = {record["seed"]: record["val_accuracy"] for record in by_quality.get("default", [])}
    out = {}
    for quality, rows in by_quality.items():
        accuracy = [row["val_accuracy"] for row in rows]
        gains = [row["val_accuracy"] - default[row["seed"]] for row in rows if row["seed"] in default]
        cold = [row["wall_seconds"] for row in rows if row["caches"] == "cold"]
        out[quality] = {"seeds": len(rows), "mean_val_accuracy": round(statistics.mean(accuracy), 4),
                        "min_val_accuracy": min(accuracy), "max_val_accuracy": max(accuracy),
                        "mean_gain_over_default_points": round(100 * statistics.mean(gains), 2) if gains else None,
                        "cold_wall_minutes": round(statistics.mean(cold) / 60, 2) if cold else None,
                        "budget_minutes": rows[0]["budget_seconds"] / 60,
                        "cold_within_budget": all(row["within_budget"] for row in rows if row["caches"] == "cold"),
                        "plans": sorted({row["plan"] for row in rows})}
    return out


def make_cifar_sub(cifar: Path, folder: Path) -> None:
    """The cifar-sub dataset (see the module docstring) in ``folder``."""
    for split, (source, per_class) in CIFAR_SUB.items():
        for class_folder in sorted(path for path in (cifar / source).iterdir() if path.is_dir()):
            target = folder / split / class_folder.name
            target.mkdir(parents=True, exist_ok=True)
            for file in sorted(class_folder.glob("*.jpg"))[:per_class]:
                with Image.open(file) as image:
                    image.convert("RGB").resize((CIFAR_SIDE, CIFAR_SIDE), Image.Resampling.BICUBIC).save(
                        target / file.name, "JPEG", quality=95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--name", default="flowers", help="The dataset's key in the results.")
    parser.add_argument("--qualities", default="default,high,best")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--make-cifar-sub", type=Path, default=None, metavar="FOLDER",
                        help="Write the cifar-sub dataset to FOLDER (from ../shared/datasets/cifar10) and exit.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.make_cifar_sub:
        make_cifar_sub(args.data, args.make_cifar_sub)
        return
    for quality in args.qualities.split(","):
        with tempfile.TemporaryDirectory() as home:
            for position, seed in enumerate(args.seeds.split(",")):
                save(args.results, args.name, run(args.data, args.name, quality, int(seed), Path(home), position == 0))
    print(json.dumps(json.loads(args.results.read_text())[args.name]["summary"], indent=2))
    print(f"wrote {args.results}")


def save(path: Path, name: str, record: dict[str, Any]) -> None:
    """Merge one run into the results after it ends (an interrupted session keeps what it measured)."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update(cpu_model=cpu_model(), cpu_count=os.cpu_count())
    runs = {**results.get(name, {}).get("runs", {}), f"{record['quality']}-seed{record['seed']}": record}
    results[name] = {"summary": summary(list(runs.values())), "runs": runs}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
