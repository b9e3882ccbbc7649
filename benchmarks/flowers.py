"""Flowers training figures: the seed tutorial from scratch, and EfficientNet-Lite0 transfer learning.

Usage: python benchmarks/flowers.py [--data ../shared/datasets/flowers] [--cases tutorial-cnn,...]

The held-out figure is accuracy on the 736 images of ``val/``, which the
runs also use for per-epoch validation (as the seed tutorial does). The
shipped model is the best epoch on that split, so ``last_epoch_val_accuracy``
is recorded as well: it involves no selection on the held-out images.

- ``tutorial-cnn``: the Keras tutorial's network at 180 px, Adam 1e-3,
  batch 32, 10 epochs, no augmentation (the tutorial reports about 60%).
- ``tutorial-cnn-augment``: the tutorial's remedy for overfitting: flips,
  rotation and zoom, dropout 0.2, 15 epochs.
- ``lite0-5m``: tf_efficientnet_lite0 with the offline ImageNet weights,
  two-stage (probe, then fine-tune), fitted to a 5-minute training budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training_runs import run_case, save

RESULTS = Path(__file__).parent / "results" / "flowers.json"
CASES = {
    "tutorial-cnn": dict(model="tutorial-cnn", epochs=10),
    "tutorial-cnn-augment": dict(model="tutorial-cnn", epochs=15, augment="standard",
                                 model_args={"dropout": 0.2}),
    "lite0-5m": dict(model="tf_efficientnet_lite0", pretrained=True, strategy="two-stage", time_budget="5m"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    for name in args.cases.split(","):
        record = run_case(f"flowers-{name}", args.data, **CASES[name])
        record["last_epoch_val_accuracy"] = record["per_epoch"][-1]["val_accuracy"]
        save(RESULTS, {name: record})  # after each case, so an interrupted session keeps what it measured


if __name__ == "__main__":
    main()
