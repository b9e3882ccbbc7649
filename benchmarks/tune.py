"""Tuning on flowers: ``imgclf tune`` with a short budget against the default ``train`` of the same model,
or (``--trials N`` without ``--model``) a search of the default photo recipe, the probe alone.

Usage: python benchmarks/tune.py [--data ../shared/datasets/flowers] [--budget 6m] [--model tutorial-cnn]
       python benchmarks/tune.py --trials 6            # the default recipe's space: probe C, views, trunks
       python benchmarks/tune.py --record runs/x --case NAME   # file a study run elsewhere (e.g. older code)

Both are scored on the 736 images of ``val/``, which the trials also use to
choose (and prune), so the tuned figure includes that selection; the
default run chooses only its best epoch on the same split. The default model
of the budget search is the seed tutorial's network (10 epochs, about 2
minutes on 2 CPUs). The probe search records each trial's val loss too:
trials that differ in nothing the recipe reads have the same loss to six
digits, which accuracy ties would hide.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from training_runs import RUNS, run_case, save

import imgclf

RESULTS = Path(__file__).parent / "results" / "tune.json"
RECIPE = ("model", "image_size", "tta", "probe_c")  # what each trial's run actually was (the planner may differ)


def study_record(out: Path, wall_seconds: float | None) -> dict[str, Any]:
    """A finished study's trials (params, val accuracy and loss, seconds) from its ``tune.json`` and trial bundles."""
    summary = json.loads((out / "tune.json").read_text(encoding="utf-8"))
    trials = []
    for row in sorted(summary["trials"], key=lambda row: row["trial"]):
        bundle = Path(row["run"]) / "model" / "model.json"
        metrics = json.loads(bundle.read_text(encoding="utf-8"))["metrics"] if bundle.is_file() else {}
        config = yaml.safe_load((Path(row["run"]) / "config.yaml").read_text(encoding="utf-8"))
        trials.append({"trial": row["trial"], "state": row["state"], "params": row["params"],
                       "recipe": {name: config.get(name) for name in RECIPE}, "val_accuracy": row["score"],
                       "val_loss": metrics.get("val_loss"), "seconds": row["seconds"]})
    best = summary["best"]
    return {"wall_seconds": wall_seconds, "trial_seconds": round(sum(row["seconds"] or 0 for row in trials), 1),
            "distinct_val_losses": len({row["val_loss"] for row in trials}), "trials": trials,
            "best": None if best is None else {"trial": best["trial"], "val_accuracy": best["score"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--budget", default="6m")
    parser.add_argument("--model", default=None, help="the budget search's model (default tutorial-cnn)")
    parser.add_argument("--trials", type=int, help="search the default photo recipe for this many trials")
    parser.add_argument("--case", default="probe_default_space")
    parser.add_argument("--record", type=Path, help="record the finished study in this folder as --case")
    parser.add_argument("--wall-seconds", type=float, help="with --record: the wall time measured around it")
    args = parser.parse_args()
    if args.record is not None:
        save(RESULTS, {args.case: study_record(args.record, args.wall_seconds)})
        return
    if args.trials is not None and args.model is None:
        out = RUNS / f"flowers-{args.case}"
        started = time.perf_counter()
        imgclf.tune(args.data, out=out, trials=args.trials)
        record = study_record(out, round(time.perf_counter() - started, 1))
        save(RESULTS, {args.case: record})
        for row in record["trials"]:
            print(f"trial {row['trial']}: val accuracy {row['val_accuracy']:.4f}, loss {row['val_loss']}, "
                  f"{row['seconds']} s, {row['params']}")
        print(f"{record['distinct_val_losses']} distinct val losses in {len(record['trials'])} trials, "
              f"{record['wall_seconds']:.0f} s")
        return
    model = args.model or "tutorial-cnn"
    default = run_case(f"flowers-{model}-default", args.data, model=model)
    save(RESULTS, {"default_train": default})
    started = time.perf_counter()
    study = imgclf.tune(args.data, out=RUNS / f"flowers-{model}-tune", time_budget=args.budget,
                        startup_trials=1, model=model)
    tuned = {"budget": args.budget, "wall_seconds": round(time.perf_counter() - started, 1),
             "trials": study.trials, "best": study.best,
             "val_accuracy": None if study.best is None else study.best["score"]}
    save(RESULTS, {"tune": tuned})
    print(f"val accuracy: default train {default['val_accuracy']:.2%}, tuned "
          f"{tuned['val_accuracy'] or 0:.2%} ({len(study.trials)} trials in {tuned['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
