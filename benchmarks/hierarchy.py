"""Categories and sub-categories on real pixels: CIFAR-10 as vehicles/{4 classes} and animals/{6 classes}.

Usage: python benchmarks/hierarchy.py [--data ../shared/datasets/cifar10] [--time-budget 2m]

The ten classes become path labels (``vehicles/airplane``, ``animals/cat``)
through a CSV manifest in a temporary folder: the 50,000 training images
(5,000 carved out for validation) and the 10,000 test images. Two fastnet
runs with the same recipe and time budget:

- ``leaves``: trained on the ten leaves; the parent's probability is the
  sum of its leaves'. Recorded: leaf accuracy and parent accuracy (each
  level scored by its own most probable node) on the test split;
- ``parents``: the same run with ``label_depth=1``, trained on the two
  parents only. Recorded: its parent accuracy on the same test images.

Both figures come from the runs' evaluations (``RUN/evaluation/metrics.json``,
``levels``), the numbers ``imgclf evaluate`` prints.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from training_runs import RUNS, run_case, save

RESULTS = Path(__file__).parent / "results" / "hierarchy.json"
TREE = {"vehicles": ("airplane", "automobile", "ship", "truck"),
        "animals": ("bird", "cat", "deer", "dog", "frog", "horse")}
MEDIUM = {"widths": [32, 128, 128]}


def hierarchy_manifest(root: Path, folder: Path) -> Path:
    """train/ and test/ of the CIFAR-10 class folders, each image labelled parent/class."""
    parent = {leaf: name for name, leaves in TREE.items() for leaf in leaves}
    path = folder / "cifar10-hierarchy.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split in ("train", "test"):
            for image in sorted((root / split).glob("*/*")):
                writer.writerow([image.resolve(), f"{parent[image.parent.name]}/{image.parent.name}", split])
    return path


def level_accuracies(run: str) -> dict[str, float]:
    """Accuracy per depth of the run's held-out evaluation: {"level1": ..., "level2": ...} (or the flat accuracy)."""
    metrics = json.loads((RUNS / run / "evaluation" / "metrics.json").read_text())
    levels = metrics.get("levels") or [{"depth": 1, "accuracy": metrics["accuracy"]}]
    return {f"level{level['depth']}": round(level["accuracy"], 4) for level in levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10"))
    parser.add_argument("--time-budget", default="2m")
    args = parser.parse_args()
    recipe = dict(model="fastnet", model_args=MEDIUM, time_budget=args.time_budget, seed=0)
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        manifest = hierarchy_manifest(args.data, Path(scratch))
        for name, depth in (("leaves", None), ("parents", 1)):
            record = run_case(f"hierarchy-{name}", manifest, label_depth=depth, **recipe)
            record["test_accuracy_by_level"] = level_accuracies(f"hierarchy-{name}")
            records[name] = record
            save(RESULTS, {name: record})  # after each case, so an interrupted session keeps what it measured
    leaves, parents = records["leaves"]["test_accuracy_by_level"], records["parents"]["test_accuracy_by_level"]
    summary = {"leaf_accuracy": leaves["level2"], "parent_accuracy_from_leaves": leaves["level1"],
               "parent_accuracy_trained_on_parents": parents["level1"], "time_budget": args.time_budget}
    save(RESULTS, {"summary": summary})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
