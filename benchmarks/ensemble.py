"""An ensemble of the three EfficientNet-Lite probes (lite0/1/2) on flowers against the best single one.

Usage: IMGCLF_HOME=/tmp/improve-home python benchmarks/ensemble.py [--data ../shared/datasets/flowers]

Each member is ``--strategy probe --pretrained`` (a logistic regression on
cached embeddings). Flowers has only train/ and val/, so the ensemble
weights are fitted on val and val is also where the gain is measured: the
``equal`` weighting, which fits nothing, is recorded as well.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training_runs import RUNS, run_case

import imgclf

RESULTS = Path(__file__).parent / "results" / "ensemble.json"
MEMBERS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/flowers")
    args = parser.parse_args()
    record: dict = {"members": {}}
    for model in MEMBERS:
        member = run_case(f"ensemble-{model}", args.data, model=model, pretrained=True, strategy="probe")
        record["members"][model] = {key: member[key] for key in ("wall_seconds", "val_accuracy", "val_loss")}
    for weights in ("fit", "equal"):
        started = time.perf_counter()
        result = imgclf.ensemble([RUNS / f"ensemble-{model}" for model in MEMBERS], RUNS / f"ensemble-{weights}",
                                 weights=weights, overwrite=True, report=False)
        best = max(scores["val"]["accuracy"] for name, scores in result.scores.items() if name != "ensemble")
        record[weights] = {"seconds": round(time.perf_counter() - started, 1), "weights": result.weights,
                           "scores": result.scores, "gain_over_best_member_points":
                           round((result.scores["ensemble"]["val"]["accuracy"] - best) * 100, 2)}
        print(weights, json.dumps(record[weights]), flush=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
