"""Binary decisions on real photos: flowers as roses against the rest, the threshold chosen on val, measured on test.

Usage: flock /tmp/imgclf-bench.lock python benchmarks/binary.py [--goal recall=0.95]

The manifest (written to a temporary folder) labels every flowers photo
``roses`` or ``other``; the dataset's own ``val/`` photos become the test
split, and training carves its validation split (10%, seeded) out of
``train/``. The default pretrained recipe's probe (tf_efficientnet_lite0,
logistic regression on cached embeddings) is trained with
``--positive roses --threshold-for GOAL``; the threshold is chosen on val,
and precision and recall at it are measured on test, next to what 0.5
(the argmax) gives and what the same goal would have picked on test itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from training_runs import RUNS, save

import imgclf

RESULTS = Path(__file__).parent / "results" / "binary.json"
FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers"
POSITIVE = "roses"


def write_manifest(folder: Path) -> Path:
    """``path,label,split``: roses / other; flowers' train -> train, its val -> test."""
    manifest = folder / "roses-vs-rest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split, ours in (("train", "train"), ("val", "test")):
            for path in sorted((FLOWERS / split).glob("*/*")):
                writer.writerow([path, POSITIVE if path.parent.name == POSITIVE else "other", ours])
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", default="recall=0.95", help="--threshold-for of the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        manifest = write_manifest(Path(folder))
        started = time.perf_counter()
        result = imgclf.train(manifest, out=RUNS / "binary-roses", overwrite=True, pretrained=True,
                              strategy="probe", positive=POSITIVE, threshold_for=args.goal)
        wall = time.perf_counter() - started
    bundle = json.loads((result.model_dir / "model.json").read_text())
    test = json.loads((result.run_dir / "evaluation" / "metrics.json").read_text())
    decision = test["decision"]
    alternatives = {row["goal"]: row for row in decision["alternatives"]}
    keys = ("threshold", "precision", "recall", "f1", "false_positive_rate")
    record = {
        "data": "flowers: roses vs the other four; flowers' val/ as test, val carved from train (10%, seed 0)",
        "model": result.config.model, "strategy": result.config.strategy, "goal": args.goal,
        "val_images": result.metrics.get("val_images"), "test_images": test["images"],
        "test_positives": decision["true_positives"] + decision["false_negatives"],
        "chosen_on_val": bundle["metrics"]["decision"],
        "test_at_chosen_threshold": {key: round(decision[key], 4) for key in keys},
        "test_at_0.5": {key: round(alternatives["0.5"][key], 4) for key in keys},
        "test_if_chosen_on_test": {key: round(alternatives[args.goal][key], 4) for key in keys}
        if args.goal in alternatives else None,
        "test_roc_auc": round(test["roc_auc_ovr"], 4), "test_average_precision": round(test["average_precision"], 4),
        "wall_seconds": round(wall, 1),
    }
    print(json.dumps(record, indent=2), flush=True)
    save(RESULTS, {f"roses-{args.goal}": record})


if __name__ == "__main__":
    main()
