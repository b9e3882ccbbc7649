"""Temperature scaling: expected calibration error and accuracy before and after, on held-out images.

Usage: IMGCLF_HOME=/tmp/improve-home python benchmarks/calibration.py [--cases flowers-lite0-3m,cifar10-fastnet-3ep]

Training fits T on its validation split. The figures are measured where T
was not fitted: CIFAR-10 on its test split (val is carved from train);
flowers has only train/ and val/, so its val images are split in two halves
and T fitted on each half is measured on the other (2-fold cross-fitting),
which is what a fresh test split would show.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.special import softmax
from training_runs import RUNS, run_case, save

import imgclf
from imgclf.data.sources import read_manifest
from imgclf.deploy.calibration import fit_temperature
from imgclf.evaluation.metrics import compute_log_loss, expected_calibration_error

RESULTS = Path(__file__).parent / "results" / "calibration.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CASES = {
    "flowers-lite0-3m": dict(data=SHARED / "flowers", model="tf_efficientnet_lite0", pretrained=True,
                             strategy="two-stage", time_budget="3m"),
    "cifar10-fastnet-3ep": dict(data=SHARED / "cifar10", model="fastnet", epochs=3),
}


def held_out_logits(run: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (before temperature) and labels of ``split`` from the run's split.csv."""
    classifier = imgclf.load(run)
    items = read_manifest(run / "split.csv").split_items(split)
    pixels = np.stack([classifier._pixels(item.path) for item in items])
    logits = np.concatenate([classifier.logits(pixels[start:start + 128]) for start in range(0, len(pixels), 128)])
    labels = np.array([classifier.classes.index(item.label) for item in items])
    return logits.astype(np.float64), labels


def figures(logits: np.ndarray, labels: np.ndarray, temperature: np.ndarray) -> dict[str, float]:
    """Accuracy, ECE and NLL of softmax(logits / temperature) (one T, or one per image)."""
    probabilities = softmax(logits / temperature.reshape(-1, 1), axis=1)
    return {"accuracy": round(float((probabilities.argmax(1) == labels).mean()), 4),
            "ece": round(expected_calibration_error(labels, probabilities), 4),
            "nll": round(compute_log_loss(labels, probabilities, logits.shape[1]), 4)}


def measure(name: str, run: Path) -> dict[str, object]:
    bundle = json.loads((run / "model" / "model.json").read_text())
    split = "test" if read_manifest(run / "split.csv").split_items("test") else "val"
    logits, labels = held_out_logits(run, split)
    if split == "test":
        temperature = np.full(len(labels), bundle["temperature"])
        how = "T fitted on val by training, measured on test"
    else:
        halves = np.arange(len(labels)) % 2
        temperature = np.empty(len(labels))
        for half in (0, 1):
            fitted = fit_temperature(logits[halves != half], labels[halves != half])
            temperature[halves == half] = fitted
        how = "val split in two halves; T fitted on one half, measured on the other"
    record = {"held_out": split, "images": int(len(labels)), "how": how, "training_temperature": bundle["temperature"],
              "before": figures(logits, labels, np.ones(len(labels))), "after": figures(logits, labels, temperature)}
    record["ece_ratio"] = round(record["after"]["ece"] / max(record["before"]["ece"], 1e-9), 3)
    print(name, json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--reuse", action="store_true", help="Measure existing runs in runs/benchmarks, no training.")
    args = parser.parse_args()
    for name in args.cases.split(","):
        options = dict(CASES[name])
        data = options.pop("data")
        record = {} if args.reuse else run_case(f"calibration-{name}", data, **options)
        record["calibration"] = measure(name, RUNS / f"calibration-{name}")
        save(RESULTS, {name: record})


if __name__ == "__main__":
    main()
