"""Update figures: teaching a trained model a new class (or more photos) with ``imgclf update`` against retraining.

Usage: python benchmarks/update.py [--flowers ../shared/datasets/flowers] [--cifar ../shared/datasets/cifar10]
                                   [--cases sunflowers,roses-tulips,cifar] [--quick]

- ``sunflowers``: tf_efficientnet_lite0 with the planner's top photo recipe
  (``--strategy tail``, as ``benchmarks/flowers.py`` names it) trained on
  four flower classes (no sunflowers) in a fresh ``IMGCLF_HOME``; then, in
  the same home (the old images' activations on disk, as a user's would
  be), ``update`` with 20, 50 and all of the sunflowers' training photos
  (always all of ``val/sunflowers``, so every case is judged on the same
  five-class val), all of them with one tail epoch instead of the
  update's four (``update_all_tail_1``), and 50 and all with
  ``class_weights="auto"`` (``update_50_balanced``, ``update_all_balanced``). Against a full five-class retrain from empty caches
  (``retrain_cold``) and, for reference, one in the warm home
  (``retrain_warm``). Recorded: wall seconds (the whole call, report
  included), five-class val accuracy, each old class's val recall before
  (the four-class model) and after, the new class's recall. Goals (issue
  27): update wall at most a tenth of the cold retrain; with all photos, val
  accuracy within 1 point of the retrain's; no old class down over 1 point.
- ``roses-tulips``: the same recipe on all five classes with half of the
  roses' and tulips' training photos, then ``update`` with the other half:
  the confused pair's recall before and after, on the first run's val
  images (the update's rule may carve a few of the added photos into val).
- ``cifar``: fastnet from scratch on nine CIFAR-10 classes (no trucks) for
  2 minutes; ``update`` with the trucks for 1 minute (warm start from the
  nine-class weights) against a 3-minute retrain on all ten: per-class test
  recall of each, the old classes' drops.

Every update runs with ``force=True`` so its figures are kept whatever the
gate says; the gate's verdict is recorded (``gate_passed``). ``--quick``
runs every case on a few images with seconds-long budgets to check the
script, and writes ``runs/benchmarks/update-quick.json`` instead of the
results file (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from training_runs import RUNS, save

import imgclf

RESULTS = Path(__file__).parent / "results" / "update.json"
FLOWERS_RECIPE: dict[str, Any] = dict(model="tf_efficientnet_lite0", strategy="tail")
QUICK_FLOWERS: dict[str, Any] = dict(model="tf_efficientnet_lite0", strategy="tail", image_size=64, workers=1)
Row = tuple[str, str, str]  # path, label, split


@contextmanager
def fresh_home() -> Iterator[Path]:
    """A new, empty IMGCLF_HOME (nothing decoded or embedded) for the block."""
    previous = os.environ.get("IMGCLF_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["IMGCLF_HOME"] = home
        try:
            yield Path(home)
        finally:
            if previous is None:
                os.environ.pop("IMGCLF_HOME")
            else:
                os.environ["IMGCLF_HOME"] = previous


@contextmanager
def tail_epochs(epochs: int) -> Iterator[None]:
    """Updates of a tail train ``epochs`` tail epochs in the block."""
    from imgclf.lifecycle import update

    kept = update.UPDATE_TAIL_EPOCHS
    update.UPDATE_TAIL_EPOCHS = epochs
    try:
        yield
    finally:
        update.UPDATE_TAIL_EPOCHS = kept


def folder_rows(root: Path, folders: dict[str, str], limit: int | None) -> list[Row]:
    """(path, class, split) of every image under ``root/<folder>/<class>/``, at most ``limit`` a class and folder."""
    rows = []
    for folder, split in folders.items():
        for class_dir in sorted(path for path in (root / folder).iterdir() if path.is_dir()):
            files = sorted(class_dir.glob("*.jpg"))[:limit]
            rows += [(str(file.resolve()), class_dir.name, split) for file in files]
    return rows


def manifest(rows: list[Row], name: str) -> Path:
    path = RUNS / "manifests" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path


def trained(name: str, rows: list[Row], **options: Any) -> tuple[Any, float]:
    """``imgclf.train`` on ``rows`` as run ``name``: the result and its wall seconds."""
    print(f"\n=== train {name}: {options}", flush=True)
    started = time.perf_counter()
    result = imgclf.train(manifest(rows, name), out=RUNS / name, overwrite=True, **options)
    return result, time.perf_counter() - started


def updated(name: str, run: Path, rows: list[Row], time_budget: str | None = None,
            class_weights: str | None = None) -> dict[str, Any]:
    """``imgclf.update`` of ``run`` with ``rows`` as run ``name``: its figures."""
    print(f"\n=== update {name}: {len(rows)} image(s)", flush=True)
    out = RUNS / name
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    result = imgclf.update(run, manifest(rows, name), out, time_budget=time_budget, force=True,
                           class_weights=class_weights)
    wall = time.perf_counter() - started
    gate = result.gate
    return {"wall_seconds": round(wall, 1), "images_added": len(rows), "gate_passed": gate.passed,
            "val_accuracy": result.train.metrics.get("val_accuracy"),
            "test_accuracy": result.train.metrics.get("test_accuracy"),
            "old_classes": {change.name: {"before": change.before, "after": change.after,
                                          "change_points": round(0.0 - change.drop, 2), "images": change.support}
                            for change in gate.classes},
            "new_classes": {name: score.score for name, score in gate.new_classes.items()},
            "recall": recall(result.run_dir)}


def recall(run: Path) -> dict[str, float]:
    """Each class's recall on the run's held-out split (its report's evaluation)."""
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    return {name: row["recall"] for name, row in metrics["per_class"].items()}


def run_record(result: Any, wall: float) -> dict[str, Any]:
    return {"wall_seconds": round(wall, 1), "val_accuracy": result.metrics.get("val_accuracy"),
            "test_accuracy": result.metrics.get("test_accuracy"), "recall": recall(result.run_dir),
            "model": result.config.model, "strategy": result.config.strategy, "epochs": result.config.epochs}


def sunflowers(data: Path, quick: bool) -> dict[str, Any]:
    """Four classes, then sunflowers given 20, 50 and all photos; against a five-class retrain."""
    limit, recipe = (8, QUICK_FLOWERS) if quick else (None, FLOWERS_RECIPE)
    rows = folder_rows(data, {"train": "train", "val": "val"}, limit)
    old = [row for row in rows if row[1] != "sunflowers"]
    new_train = [row for row in rows if row[1] == "sunflowers" and row[2] == "train"]
    new_val = [row for row in rows if row[1] == "sunflowers" and row[2] == "val"]
    record: dict[str, Any] = {"recipe": recipe}
    with fresh_home():
        base, wall = trained("update-flowers-four", old, **recipe)
        record["four_classes"] = run_record(base, wall)
        for given in ((3, 6, None) if quick else (20, 50, None)):
            added = new_train[:given] + new_val
            record[f"update_{given or 'all'}"] = updated(f"update-flowers-{given or 'all'}", base.run_dir, added)
        with tail_epochs(1):  # what the update's tail epochs buy: one instead of UPDATE_TAIL_EPOCHS
            record["update_all_tail_1"] = updated("update-flowers-all-tail-1", base.run_dir, new_train + new_val)
        for given in ((6, None) if quick else (50, None)):  # --class-weights auto: a rare new class against the rest
            added = new_train[:given] + new_val
            record[f"update_{given or 'all'}_balanced"] = updated(f"update-flowers-{given or 'all'}-balanced",
                                                                  base.run_dir, added, class_weights="auto")
        retrain, wall = trained("update-flowers-retrain-warm", rows, **recipe)
        record["retrain_warm"] = run_record(retrain, wall)
    with fresh_home():
        retrain, wall = trained("update-flowers-retrain-cold", rows, **recipe)
        record["retrain_cold"] = run_record(retrain, wall)
    cold = record["retrain_cold"]
    for key in [key for key in record if key.startswith("update_")]:
        case = record[key]
        case["wall_fraction_of_cold_retrain"] = round(case["wall_seconds"] / cold["wall_seconds"], 4)
        if case["val_accuracy"] is not None and cold["val_accuracy"] is not None:
            case["val_accuracy_minus_retrain_points"] = round(100 * (case["val_accuracy"] - cold["val_accuracy"]), 2)
    return record


def roses_tulips(data: Path, quick: bool) -> dict[str, Any]:
    """Half of the roses' and tulips' training photos, then the other half by update: the pair's recall."""
    limit, recipe = (8, QUICK_FLOWERS) if quick else (None, FLOWERS_RECIPE)
    rows = folder_rows(data, {"train": "train", "val": "val"}, limit)
    pair = ("roses", "tulips")
    held_back = [row for label in pair
                 for row in [row for row in rows if row[1] == label and row[2] == "train"][1::2]]
    with fresh_home():
        base, wall = trained("update-roses-tulips-half", [row for row in rows if row not in held_back], **recipe)
        record = {"recipe": recipe, "half": run_record(base, wall),
                  "update": updated("update-roses-tulips-rest", base.run_dir, held_back)}
    gate = record["update"]["old_classes"]  # the same val images before and after (the update may carve new val)
    record["pair_recall"] = {label: {key: gate[label][key] for key in ("before", "after")} for label in pair}
    return record


def cifar(data: Path, quick: bool) -> dict[str, Any]:
    """fastnet on nine classes for 2 minutes, updated with trucks for 1, against a 3-minute retrain on ten."""
    limit = 20 if quick else None
    budgets = ("10s", "5s", "15s") if quick else ("2m", "1m", "3m")
    options: dict[str, Any] = dict(model="fastnet", **({"workers": 1} if quick else {}))
    rows = folder_rows(data, {"train": "train", "test": "test"}, limit)
    nine = [row for row in rows if row[1] != "truck"]
    with fresh_home():
        base, wall = trained("update-cifar-nine", nine, time_budget=budgets[0], **options)
        record = {"options": options, "budgets": budgets, "nine_classes": run_record(base, wall),
                  "update": updated("update-cifar-truck", base.run_dir, [row for row in rows if row[1] == "truck"],
                                    time_budget=budgets[1])}
        retrain, wall = trained("update-cifar-retrain", rows, time_budget=budgets[2], **options)
        record["retrain"] = run_record(retrain, wall)
    record["old_class_change_points"] = {
        name: round(100 * (record["update"]["recall"][name] - before), 2)
        for name, before in record["nine_classes"]["recall"].items()}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flowers", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--cifar", type=Path, default=Path("../shared/datasets/cifar10"))
    parser.add_argument("--cases", default="sunflowers,roses-tulips,cifar")
    parser.add_argument("--quick", action="store_true", help="a few images and seconds-long budgets: checks the script")
    args = parser.parse_args()
    results = RUNS / "update-quick.json" if args.quick else RESULTS
    cases = {"sunflowers": lambda: sunflowers(args.flowers, args.quick),
             "roses-tulips": lambda: roses_tulips(args.flowers, args.quick),
             "cifar": lambda: cifar(args.cifar, args.quick)}
    for name in args.cases.split(","):
        if name not in cases:
            parser.error(f"--cases: unknown case {name}; choose from {', '.join(cases)}")
        record = cases[name]()
        print(json.dumps(record, indent=2, default=str), flush=True)
        save(results, {name: record})  # after each case, so an interrupted session keeps what it measured


if __name__ == "__main__":
    main()
