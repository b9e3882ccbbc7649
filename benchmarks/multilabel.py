"""Multi-label on real pixels: 2x2 mosaics of CIFAR-10 images, fastnet from scratch in 5 minutes.

Usage: python benchmarks/multilabel.py [--data ../shared/datasets/cifar10] [--train 20000] [--test 4000]

The committed figures: --train 10000 --test 2000 (a shared 2-core machine).

Each 64 px mosaic holds four 32 px CIFAR-10 images of 1 to 4 distinct
classes (every chosen class at least once), and its labels are the classes
present. Training mosaics (a tenth of them the validation split, where the
per-label thresholds are chosen) are made from CIFAR's training images, test
mosaics from its test images, with a fixed seed, as PNGs under /tmp. Reports
mAP, micro-F1 and subset accuracy on the test mosaics at the per-label
thresholds (``--threshold-for f1``) and at 0.5. Figures go to
``benchmarks/results/multilabel.json``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from PIL import Image
from training_runs import RUNS, run_case, save

import imgclf

RESULTS = Path(__file__).parent / "results" / "multilabel.json"
SCRATCH = Path("/tmp/imgclf-multilabel-bench")
TILE = 32
SMALL = {"widths": [32, 64, 64]}  # cifar10.py's small fastnet: the 2-core machine it ran on is shared


def make_mosaics(source: Path, count: int, rng: np.random.Generator, folder: Path) -> list[tuple[Path, list[str]]]:
    """``count`` mosaics from ``source`` (CIFAR's train/ or test/ folder of class folders) with their label sets."""
    classes = sorted(path.name for path in source.iterdir() if path.is_dir())
    files = {name: sorted((source / name).glob("*")) for name in classes}
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for number in range(count):
        chosen = list(rng.choice(len(classes), size=int(rng.integers(1, 5)), replace=False))
        tiles = chosen + list(rng.choice(chosen, size=4 - len(chosen)))
        rng.shuffle(tiles)
        mosaic = Image.new("RGB", (2 * TILE, 2 * TILE))
        for position, label in enumerate(tiles):
            options = files[classes[label]]
            with Image.open(options[int(rng.integers(len(options)))]) as tile:
                mosaic.paste(tile.convert("RGB").resize((TILE, TILE)), ((position % 2) * TILE, (position // 2) * TILE))
        path = folder / f"{number:05d}.png"
        mosaic.save(path)
        made.append((path, sorted(classes[label] for label in chosen)))
    return made


def write_manifest(data: Path, train: int, test: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    manifest = SCRATCH / f"mosaics-{train}-{test}-{seed}.csv"
    if manifest.exists():
        return manifest
    started = time.perf_counter()
    rows = [(path, labels, "val" if number % 10 == 0 else "train")
            for number, (path, labels) in enumerate(make_mosaics(data / "train", train, rng, SCRATCH / "train"))]
    rows += [(path, labels, "test") for path, labels in make_mosaics(data / "test", test, rng, SCRATCH / "test")]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        writer.writerows([str(path), "|".join(labels), split] for path, labels, split in rows)
    print(f"made {len(rows):,} mosaics in {time.perf_counter() - started:.0f} s: {manifest}", flush=True)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10"))
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", default="5m")
    args = parser.parse_args()
    manifest = write_manifest(args.data, args.train, args.test, args.seed)
    record = run_case("multilabel-fastnet", manifest, model="fastnet", model_args=SMALL, time_budget=args.time_budget,
                      threshold_for="f1", seed=args.seed)
    evaluation = imgclf.evaluate(RUNS / "multilabel-fastnet")  # its test split, at the bundle's thresholds
    metrics = evaluation.metrics
    tuned = {key: metrics[key] for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")}
    record.update(mosaics={"train": args.train - args.train // 10, "val": args.train // 10, "test": args.test,
                           "seed": args.seed, "side": 2 * TILE},
                  test_mean_average_precision=metrics["mean_average_precision"],
                  test_per_label_thresholds=tuned, test_at_0_5=metrics["at_0.5"],
                  label_cardinality=metrics["label_cardinality"],
                  thresholds={name: row["threshold"] for name, row in metrics["per_label"].items()},
                  per_label_average_precision={name: row["average_precision"]
                                               for name, row in metrics["per_label"].items()})
    print(f"test mAP {metrics['mean_average_precision']:.4f}; per-label thresholds: micro-F1 {tuned['micro_f1']:.4f}, "
          f"subset accuracy {tuned['subset_accuracy']:.4f}; at 0.5: micro-F1 {metrics['at_0.5']['micro_f1']:.4f}, "
          f"subset accuracy {metrics['at_0.5']['subset_accuracy']:.4f}")
    save(RESULTS, {f"fastnet-{args.time_budget}-{args.train}-{args.test}": record})


if __name__ == "__main__":
    main()
