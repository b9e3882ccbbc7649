"""Widths against epochs at a fixed compute: which fastnet a 5- or 20-minute CIFAR-10 budget should train.

Usage: python benchmarks/cifar10_widths.py [--data ../shared/datasets/cifar10] [--cases 5m-32-128-128,...]
[--seed 0]

Each case trains one width for the epochs that its measured speed
(``benchmarks/results/cifar10_throughput.json``, the ``widths-*`` and
``default`` cases: batch 512, 2 threads, interleaved in one process) buys in
the budget's seconds less ``SETUP_S`` (what the budget spends measuring
before it plans), on all 50,000 training images (``--val-fraction 0``, as
the 5- and 20-minute benchmark cases train), with every other default of the
recipe; the figure is the test accuracy with the bundle's TTA on the 10,000
test images. The epochs are fixed rather than budgeted so the comparison
does not depend on the load the runs meet: accuracies, not times, are the
figures (run under the lock anyway: the runs use both cores). One seed is
±0.3 points of noise. Results go to ``benchmarks/results/cifar10_widths.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training_runs import run_case, save

RESULTS = Path(__file__).parent / "results" / "cifar10_widths.json"
THROUGHPUT = Path(__file__).parent / "results" / "cifar10_throughput.json"
TRAIN_IMAGES = 50_000
SETUP_S = 10  # the budget's own step measurements before it plans the epochs
# case -> (budget seconds, widths, the throughput case that measured their speed)
CASES = {
    "5m-24-96-96": (300, (24, 96, 96), "widths-24-96-96"),
    "5m-32-128-128": (300, (32, 128, 128), "default"),
    "20m-48-192-192": (1200, (48, 192, 192), "widths-48-192-192"),
    "20m-64-256-256": (1200, (64, 256, 256), "widths-64-256-256"),
}


def epochs_bought(budget_s: float, images_per_second: float) -> float:
    """Epochs of the 50,000 training images that ``budget_s`` buys at this speed, to one decimal as the budget plans."""
    return round((budget_s - SETUP_S) * images_per_second / TRAIN_IMAGES, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    speeds = json.loads(THROUGHPUT.read_text())["cases"]
    for name in args.cases.split(","):
        budget, widths, measured = CASES[name]
        rate = speeds[measured]["images_per_second"]
        epochs = epochs_bought(budget, rate)
        record = run_case(f"cifar10-widths-{name}-seed{args.seed}", args.data, model="fastnet",
                          model_args={"widths": list(widths)}, epochs=epochs, batch_size=512, val_fraction=0.0,
                          seed=args.seed)
        record.update(budget_s=budget, measured_images_per_second=rate, seed=args.seed)
        save(RESULTS, {f"{name}-seed{args.seed}": record})


if __name__ == "__main__":
    main()
