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
- ``baseline``: the plain script of ``benchmarks/transfer.py`` (lite0
  embeddings, logistic regression), the yardstick for the next cases.
- ``default``: ``imgclf train flowers`` with no options (the planner's photo
  recipe for 5 minutes), from the JPEG files with empty caches (a fresh
  ``IMGCLF_HOME``); ``budget-1m`` and ``budget-20m`` the same with
  ``--time-budget``. Wall and process CPU seconds (children included) of the
  whole call. Run ``baseline,default`` together: figures from one process.
- ``tail-rerun``: the planner's top plan named explicitly (lite0, ``--strategy
  tail``, so a loaded machine cannot make the planner drop the tail) twice
  in one fresh ``IMGCLF_HOME``: the second run finds the decoded images and
  the tail's activations on disk; both runs' figures are recorded
  (``first_run``).
- ``plan-seed1``, ``plan-seed2``: the planner's top plan named explicitly
  (lite0, ``--strategy tail``) with ``--seed 1`` and ``2``
  from empty caches: the default's spread over seeds (the split stays
  the folders'; the seed moves the probe's folds and the tail's order and views).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

from training_runs import case_arguments, run_case, save
from transfer import baseline

RESULTS = Path(__file__).parent / "results" / "flowers.json"
CASES = {
    "tutorial-cnn": dict(model="tutorial-cnn", epochs=10),
    "tutorial-cnn-augment": dict(model="tutorial-cnn", epochs=15, augment="standard",
                                 model_args={"dropout": 0.2}),
    "lite0-5m": dict(model="tf_efficientnet_lite0", pretrained=True, strategy="two-stage", time_budget="5m"),
    "default": {},
    "budget-1m": dict(time_budget="1m"),
    "budget-20m": dict(time_budget="20m"),
    "tail-rerun": dict(model="tf_efficientnet_lite0", strategy="tail"),
    "plan-seed1": dict(model="tf_efficientnet_lite0", strategy="tail", seed=1),
    "plan-seed2": dict(model="tf_efficientnet_lite0", strategy="tail", seed=2),
}
COLD = ("default", "budget-1m", "budget-20m", "tail-rerun", "plan-seed1", "plan-seed2")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the decode workers)."""
    return sum(usage.ru_utime + usage.ru_stime for usage in (resource.getrusage(resource.RUSAGE_SELF),
                                                             resource.getrusage(resource.RUSAGE_CHILDREN)))


def cold_case(name: str, data: Path) -> dict:
    """A case in a fresh IMGCLF_HOME: nothing decoded or embedded before (the OS page cache may hold the JPEGs).

    ``tail-rerun`` runs twice there and records the second (warm) run, with the first's figures beside it.
    """
    previous = os.environ.get("IMGCLF_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["IMGCLF_HOME"] = home
        cpu = cpu_seconds()
        try:
            first = None
            if name == "tail-rerun":
                first = run_case(f"flowers-{name}-first", data, **CASES[name])
                first["cpu_seconds"] = round(cpu_seconds() - cpu, 1)
                cpu = cpu_seconds()
            record = run_case(f"flowers-{name}", data, **CASES[name])
            if first is not None:
                record["first_run"] = {key: first[key] for key in ("wall_seconds", "cpu_seconds", "val_accuracy")}
        finally:
            if previous is None:
                os.environ.pop("IMGCLF_HOME")
            else:
                os.environ["IMGCLF_HOME"] = previous
    record["cpu_seconds"] = round(cpu_seconds() - cpu, 1)
    record["caches"] = "empty IMGCLF_HOME" if name != "tail-rerun" else "warm: the second run in one IMGCLF_HOME"
    return record


def main() -> None:
    args = case_arguments(__doc__, "../shared/datasets/flowers", ["baseline", *CASES])
    for name in args.cases.split(","):
        if name == "baseline":
            cpu, started = cpu_seconds(), time.perf_counter()
            record = {**baseline(args.data), "cpu_seconds": round(cpu_seconds() - cpu, 1)}
            record["wall_seconds"] = round(time.perf_counter() - started, 1)
            print(record, flush=True)
            save(RESULTS, {name: record})
            continue
        record = cold_case(name, args.data) if name in COLD else run_case(f"flowers-{name}", args.data, **CASES[name])
        record["last_epoch_val_accuracy"] = record["per_epoch"][-1]["val_accuracy"]
        record["options"] = CASES[name]
        save(RESULTS, {name: record})  # after each case, so an interrupted session keeps what it measured


if __name__ == "__main__":
    main()
