"""TensorFlow vs PyTorch: the seed tutorial's CNN trained on both backends with ``imgclf.compare``.

Usage: python benchmarks/compare_backends.py [--cifar10 ../shared/datasets/cifar10]
       [--flowers ../shared/datasets/flowers] [--cases cifar10,flowers] [--epochs 10] [--train-limit N]

- ``cifar10``: the seed article's protocol (see ``cifar10.py``): 50,000
  training images, the 10,000 test images evaluated after every epoch,
  tutorial-cnn at 32 px, Adam 1e-3, batch 32, no augmentation; the article
  reports 48.98% after epoch 1 and 63.67% after epoch 10 for both frameworks.
- ``flowers``: the Keras flowers tutorial: 180 px, 2,934 training and 736
  validation images, same recipe.

Both backends run in fp32 with the same split and seed. Recorded per case
and backend: test (validation) accuracy after epoch 1 and the last epoch,
seconds per training epoch, training and inference images/s, parameter
counts. ``--train-limit`` keeps only the first N training images per class
(a reduced run, recorded as such in the JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from cifar10 import seed_protocol_manifest
from training_runs import RUNS

import imgclf

RESULTS = Path(__file__).parent / "results" / "compare_backends.json"
SEED_REPORTED = {"epoch_1": 0.4898, "epoch_10": 0.6367}


def limited(manifest: Path, per_class: int | None, folder: Path) -> Path:
    """The manifest with at most ``per_class`` training images of each class (all held-out images kept)."""
    if per_class is None:
        return manifest
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    taken: dict[str, int] = {}
    kept = []
    for row in rows:
        if row["split"] == "train":
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            if taken[row["label"]] > per_class:
                continue
        kept.append(row)
    path = folder / f"limited-{manifest.name}"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(kept)
    return path


def folder_manifest(root: Path, folder: Path) -> Path:
    """A manifest of a train/ + val/ class-folder dataset (so --train-limit can apply to it too)."""
    path = folder / f"{root.name}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split in ("train", "val"):
            for image in sorted((root / split).glob("*/*")):
                writer.writerow([image.resolve(), image.parent.name, split])
    return path


def run(name: str, data: Path, epochs: float) -> dict:
    print(f"\n=== {name}: tutorial-cnn, {epochs:g} epochs, torch vs tensorflow", flush=True)
    started = time.perf_counter()
    comparison = imgclf.compare(data, backends="torch,tensorflow", model="tutorial-cnn", epochs=epochs,
                                out=RUNS / f"compare-{name}", overwrite=True)
    record: dict = {"wall_seconds": round(time.perf_counter() - started, 1),
                    "parameters_match": comparison.parameters_match, "same_split": comparison.same_split}
    for result in comparison.results:
        accuracy = [row["val_accuracy"] for row in result.history]
        record[result.backend] = {
            "held_out_accuracy_by_epoch": accuracy,
            "accuracy_epoch_1": accuracy[0], "accuracy_last_epoch": accuracy[-1],
            "seconds_per_epoch": result.seconds_per_epoch,
            # the median resists a busy neighbour on a shared machine and TensorFlow's first-epoch tracing
            "median_seconds_per_epoch": round(statistics.median(row["seconds"] for row in result.history), 3),
            "seconds_by_epoch": [row["seconds"] for row in result.history],
            "train_images_per_second": result.train_images_per_second,
            "inference_images_per_second": result.inference_images_per_second,
            "parameters": result.parameters,
            "held_out_images": result.metrics.get("val_images"),
        }
    torch_seconds = record["torch"]["seconds_per_epoch"]
    record["tensorflow_over_torch_seconds_per_epoch"] = round(record["tensorflow"]["seconds_per_epoch"] / torch_seconds, 2)
    print(json.dumps(record, indent=1), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=Path("../shared/datasets/cifar10"))
    parser.add_argument("--flowers", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--cases", default="cifar10,flowers")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--train-limit", type=int, default=None, help="training images per class (reduced run)")
    args = parser.parse_args()
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    cases = existing.get("cases", {})
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in args.cases.split(","):
            root = args.cifar10 if name == "cifar10" else args.flowers
            if not root.is_dir():
                raise SystemExit(f"{root}: dataset not found (see ../shared/datasets/README.md)")
            manifest = seed_protocol_manifest(root, folder) if name == "cifar10" else folder_manifest(root, folder)
            record = run(name, limited(manifest, args.train_limit, folder), args.epochs)
            record.update(epochs=args.epochs, train_images_per_class=args.train_limit or "all")
            if name == "cifar10":
                record["seed_reported"] = SEED_REPORTED
            cases[name] = record
            machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                       "torch": version("torch"), "tensorflow": version("tensorflow-cpu"),
                       "processor": platform.processor() or platform.machine()}
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"machine": machine, "cases": cases}, indent=2) + "\n")
            print(f"wrote {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
