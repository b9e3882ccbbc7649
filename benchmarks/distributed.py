"""Data-parallel training: CIFAR-10 fastnet in 2 gloo processes against 1 process, same recipe and global batch.

    flock /tmp/imgclf-bench.lock python benchmarks/distributed.py [--data ../shared/datasets/cifar10]
        [--per-class 1000] [--epochs 2]

A class-balanced subset of CIFAR-10's train/ (``--per-class`` images per
class, 10% carved out for validation) and of test/ (a fifth as many),
trained as ``imgclf train`` does, once in one process and once with
``--nproc 2``. The point on a 2-core CPU is not speed but equal results:
the optimiser steps must be equal (read from the last checkpoint) and the
test accuracy must agree within the noise of two seeds of one process
(the ranks augment their shares with their own generators, so the runs
are not bit-identical). Prints a table and writes
benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"
RECIPE = ["--model", "fastnet", "--model-arg", "widths=[32,64,64]", "--batch-size", "256", "--augment", "light",
          "--workers", "2"]


def subset_manifest(data: Path, per_class: int, folder: Path) -> Path:
    """The first ``per_class`` train images of each class (and a fifth as many test images) as a CSV manifest."""
    path = folder / "cifar10-subset.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split, count in (("train", per_class), ("test", per_class // 5)):
            for label in sorted(os.listdir(data / split)):
                for name in sorted(os.listdir(data / split / label))[:count]:
                    writer.writerow([str(data / split / label / name), label, split])
    return path


def train(manifest: Path, out: Path, epochs: float, seed: int, nproc: int | None,
          recipe: list[str] = RECIPE) -> dict[str, object]:
    """One ``imgclf train`` run of ``recipe``: wall time, optimiser steps, training img/s and the test accuracy."""
    import torch

    command = [sys.executable, "-m", "imgclf", "train", str(manifest), "--out", str(out), "--epochs", str(epochs),
               "--seed", str(seed), *recipe, *(["--nproc", str(nproc)] if nproc else [])]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "model" / "model.json").read_text())["metrics"]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    position = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["position"]
    return {"processes": nproc or 1, "seed": seed, "wall_seconds": round(seconds, 1),
            "train_seconds": metrics["train_seconds"], "optimizer_steps": position["stage_step"],
            "test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
            "train_images_per_second": round(sum(float(row["images_per_second"]) * float(row["seconds"])
                                                 for row in rows) / sum(float(row["seconds"]) for row in rows), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/cifar10")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgclf-distributed-") as folder:
        manifest = subset_manifest(args.data, args.per_class, Path(folder))
        runs = [train(manifest, Path(folder) / "one-seed0", args.epochs, 0, None),
                train(manifest, Path(folder) / "one-seed1", args.epochs, 1, None),
                train(manifest, Path(folder) / "two-seed0", args.epochs, 0, 2)]
    print(f"{'processes':>9} {'seed':>4} {'steps':>6} {'test acc':>9} {'val acc':>8} {'train s':>8} {'wall s':>7}")
    for run in runs:
        print(f"{run['processes']:>9} {run['seed']:>4} {run['optimizer_steps']:>6} {run['test_accuracy']:>9.4f} "
              f"{run['val_accuracy']:>8.4f} {run['train_seconds']:>8.1f} {run['wall_seconds']:>7.1f}")
    one, other_seed, two = runs
    summary = {"steps_equal": one["optimizer_steps"] == two["optimizer_steps"],
               "accuracy_gap_two_vs_one": round(abs(two["test_accuracy"] - one["test_accuracy"]), 4),
               "accuracy_gap_between_seeds": round(abs(other_seed["test_accuracy"] - one["test_accuracy"]), 4)}
    print(json.dumps(summary))
    RESULTS.write_text(json.dumps({"dataset": "cifar10 subset", "per_class": args.per_class, "epochs": args.epochs,
                                   "recipe": RECIPE, "machine_cpus": os.cpu_count(), "runs": runs, **summary},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
