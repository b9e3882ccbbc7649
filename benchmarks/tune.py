"""Tuning on flowers: ``imgclf tune`` with a short budget against the default ``train`` of the same model.

Usage: python benchmarks/tune.py [--data ../shared/datasets/flowers] [--budget 6m] [--model tutorial-cnn]

Both are scored on the 736 images of ``val/``, which the trials also use to
choose (and prune), so the tuned figure includes that selection; the
default run chooses only its best epoch on the same split. The default model
here is the seed tutorial's network (10 epochs, about 2 minutes on 2 CPUs):
the flowers default (EfficientNet-Lite0 two-stage) takes longer than a short
budget allows one trial on this machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from training_runs import RUNS, run_case, save

import imgclf

RESULTS = Path(__file__).parent / "results" / "tune.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--budget", default="6m")
    parser.add_argument("--model", default="tutorial-cnn")
    args = parser.parse_args()
    default = run_case(f"flowers-{args.model}-default", args.data, model=args.model)
    save(RESULTS, {"default_train": default})
    started = time.perf_counter()
    study = imgclf.tune(args.data, out=RUNS / f"flowers-{args.model}-tune", time_budget=args.budget,
                        startup_trials=1, model=args.model)
    tuned = {"budget": args.budget, "wall_seconds": round(time.perf_counter() - started, 1),
             "trials": study.trials, "best": study.best,
             "val_accuracy": None if study.best is None else study.best["score"]}
    save(RESULTS, {"tune": tuned})
    print(f"val accuracy: default train {default['val_accuracy']:.2%}, tuned "
          f"{tuned['val_accuracy'] or 0:.2%} ({len(study.trials)} trials in {tuned['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
