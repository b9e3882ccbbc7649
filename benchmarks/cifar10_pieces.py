"""airbench's recipe pieces one at a time on fastnet: accuracy at a fixed number of epochs on a CIFAR-10 subset.

Usage: python benchmarks/cifar10_pieces.py [--data ../shared/datasets/cifar10] [--cases base,airbench-augment,...]

Each case changes one thing against the recipe as it was before issue 15
(``base``). The subset (1,000 training and 200 val images per class from
``train/``, every test image) keeps a run to a few minutes on a quiet 2-core
CPU; accuracies, not times, are the figures here. Results go to
``benchmarks/results/cifar10_pieces.json``.
"""

from __future__ import annotations

import csv
import random
import tempfile
from pathlib import Path

from cifar10 import BASELINE
from training_runs import case_arguments, run_case, save

RESULTS = Path(__file__).parent / "results" / "cifar10_pieces.json"
PROTOCOL = dict(model="fastnet", model_args={"widths": [32, 64, 64]}, epochs=6, batch_size=256, tta=False,
                **{key: value for key, value in BASELINE.items() if key != "tta_shift"})
CASES = {
    "base": {},
    "airbench-augment": {"augment": "airbench"},
    "lookahead": {"lookahead": True, "ema": False},
    "muon": {"optimizer": "muon", "lr": 0.212, "muon_lr": 0.0307, "warmup_epochs": 0},
    "airbench-augment+whitening-freeze": {"augment": "airbench", "whitening_bias_epochs": 1.8},  # not yet run
}


def subset_manifest(root: Path, folder: Path, per_class: int = 1000, val_per_class: int = 200) -> Path:
    """A seeded per-class sample of train/ (train and val rows) and every test/ image."""
    rng = random.Random(0)
    path = folder / "cifar10-subset.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for label in sorted(entry.name for entry in (root / "train").iterdir()):
            files = sorted((root / "train" / label).iterdir())
            rng.shuffle(files)
            writer.writerows([file, label, "train"] for file in files[:per_class])
            writer.writerows([file, label, "val"] for file in files[per_class:per_class + val_per_class])
        writer.writerows([image, image.parent.name, "test"] for image in sorted((root / "test").glob("*/*")))
    return path


def main() -> None:
    args = case_arguments(__doc__, "../shared/datasets/cifar10", list(CASES))
    with tempfile.TemporaryDirectory() as scratch:
        data = subset_manifest(args.data, Path(scratch))
        for name in args.cases.split(","):
            record = run_case(f"cifar10-pieces-{name}", data, **{**PROTOCOL, **CASES[name]})
            record["change"] = CASES[name]
            save(RESULTS, {name: record})


if __name__ == "__main__":
    main()
