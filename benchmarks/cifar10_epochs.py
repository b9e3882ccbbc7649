"""Fewer epochs for the same accuracy: CIFAR-10 fastnet changes at a fixed, reduced length.

Usage: python benchmarks/cifar10_epochs.py [--data ../shared/datasets/cifar10] [--cases defaults,muon,...]

The protocol of ``airbench_reference.py``'s ``imgclf`` rows: widths
32/128/128, 4 epochs, batch 1024, seed 0, 45,000 training images (5,000
held out for val), the bundle's TTA, all 10,000 test images. Each case
changes one thing against today's defaults; accuracies, not times, are the
figures (a shared machine makes the seconds incomparable; what a change costs
per step is measured separately, in the same process). Results go to
``benchmarks/results/cifar10_epochs.json``.
"""

from __future__ import annotations

from pathlib import Path

from training_runs import case_arguments, run_case, save

RESULTS = Path(__file__).parent / "results" / "cifar10_epochs.json"
PROTOCOL = dict(model="fastnet", model_args={"widths": [32, 128, 128]}, epochs=4, batch_size=1024, seed=0)
CASES = {
    "defaults": {},
    # airbench94_muon.py: Muon at 0.24 (momentum 0.6) for the filters, batch 2000, no warm-up; the rest by
    # the recipe's Nesterov SGD at its rate for that batch (1.465e-3 per example, 64x on BatchNorm biases)
    "muon": dict(optimizer="muon", muon_lr=0.24, batch_size=2000, lr=2.93, momentum=0.85, bias_lr_scale=64.0,
                 weight_decay=0.0153 / 11.5, warmup_epochs=0.0),
    # progressive resizing: epochs 1-2 at 24 px, 3-4 at 32 px
    "low-res-24": dict(low_res=24),
}


def main() -> None:
    args = case_arguments(__doc__, "../shared/datasets/cifar10", list(CASES))
    for name in args.cases.split(","):
        record = run_case(f"cifar10-epochs-{name}", args.data, **{**PROTOCOL, **CASES[name]})
        record["change"] = CASES[name]
        save(RESULTS, {name: record})


if __name__ == "__main__":
    main()
