"""Candidate photo plans for larger budgets: tail models at several trunks and sizes, and ensembles of them.

Usage: python benchmarks/plans.py [--data ../shared/datasets/flowers] [--name flowers] [--seed 0]
                                  [--members lite0@224,...] [--runs runs/benchmarks/plans] [--results PATH]

Each member is ``imgclf train DATA --model M --image-size S --strategy tail``
(the default plan's recipe on another trunk or input size), trained into
``RUNS/NAME-M-S`` unless a finished run is there already. A member named
``M@S/finetune`` is instead the whole network fine-tuned for 12 epochs after
its probe (``--strategy two-stage --epochs 13 --tta``), and ``M@S/tailN`` the
tail for N epochs instead of 10: the two other ways a longer budget could be
spent on one trunk, in ``RUNS/NAME-M-S-finetune`` and ``-tailN`` (its wall seconds
are then the ones recorded when it trained: ``wall_seconds.txt`` beside its
files). Every candidate ensemble is then built from its members' kept val
outputs, as ``--ensemble`` builds it (``--weights auto``: ``weighting`` says
which was chosen): its val accuracy and log loss, the val accuracy with
weights fitted on all of val (``val_accuracy_fitted_weights``: optimistic,
they fit the images they are scored on) and cross-fitted (each fifth of val
scored with weights fitted on the other four), the two log losses ``auto``
compares, and its cost, the sum of its members' wall seconds (each from cold
caches for its own input size). ``benchmarks/results/plans.json`` keeps one
record per dataset (``--name``); the planner's ensemble plans cite it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import imgclf
from imgclf.data.sources import read_manifest
from imgclf.deploy.bundle import find_bundle
from imgclf.deploy.classifier import Classifier
from imgclf.deploy.kept_outputs import kept_probabilities
from imgclf.deploy.runtime_choice import cpu_model
from imgclf.paths import absolute_path
from imgclf.workflows.ensemble import build_ensemble
from imgclf.workflows.ensemble_weights import weigh

RESULTS = Path(__file__).parent / "results" / "plans.json"
MEMBERS = ("tf_efficientnet_lite0@224", "tf_efficientnet_lite1@240", "tf_efficientnet_lite2@260",
           "tf_efficientnet_lite0@300", "tf_efficientnet_lite2@340", "tf_efficientnet_lite0@380")
LONGER = ("tf_efficientnet_lite0@224/finetune", "tf_efficientnet_lite0@224/tail20")  # more time on one trunk
FOUR = ("lite0@224", "lite1@240", "lite2@260", "lite0@300")  # the largest plan (engines/planner.py)
FINETUNE_EPOCHS = 12  # after the probe: the whole network, as --strategy two-stage trains it
ENSEMBLES = (("lite0@224", "lite1@240"), ("lite0@224", "lite2@260"), ("lite0@224", "lite0@300"),
             ("lite2@260", "lite0@300"), ("lite0@224", "lite1@240", "lite2@260"),
             ("lite0@224", "lite2@260", "lite0@300"), FOUR,
             # candidates for a plan larger than FOUR, for the 60-minute budget
             (*FOUR, "lite2@340"), (*FOUR, "lite0@380"), (*FOUR, "lite2@340", "lite0@380"),
             ("lite0@224", "lite2@340", "lite0@380"), ("lite0@224", "lite2@260", "lite2@340", "lite0@300"),
             ("lite0@224", "lite0@224/finetune"), (*FOUR, "lite0@224/finetune"),
             ("lite0@224/tail20", *FOUR[1:]))
WALL_FILE = "wall_seconds.txt"


def short(member: str) -> str:
    return member.removeprefix("tf_efficientnet_")


def recipe_of(variant: str) -> dict[str, Any]:
    """``imgclf.train``'s options for a member's variant: '' the plans' tail, 'finetune' or 'tailN'."""
    if variant == "finetune":
        return {"strategy": "two-stage", "epochs": 1 + FINETUNE_EPOCHS, "probe_epochs": 1, "tta": True}
    if variant.startswith("tail") and variant[4:].isdigit():
        return {"strategy": "tail", "epochs": 1 + int(variant[4:])}
    if variant:
        raise SystemExit(f"member variant {variant!r}: expected finetune or tailN")
    return {"strategy": "tail"}


def member_run(data: Path, runs: Path, name: str, member: str, seed: int) -> dict[str, Any]:
    """The member's run (trained now unless finished before): val accuracy and the wall seconds it took."""
    model, _, rest = member.partition("@")
    size, _, variant = rest.partition("/")
    folder = runs / f"{name}-{short(member).replace('@', '-').replace('/', '-')}"
    if not (folder / "model" / "model.json").is_file():
        started = time.perf_counter()
        imgclf.train(data, out=folder, overwrite=True, model=model, image_size=int(size), seed=seed,
                     **recipe_of(variant))
        (folder / WALL_FILE).write_text(f"{time.perf_counter() - started:.1f}\n")
    metrics = json.loads((folder / "model" / "model.json").read_text())["metrics"]
    wall = float((folder / WALL_FILE).read_text()) if (folder / WALL_FILE).is_file() else None
    record = {"run": str(folder), "val_accuracy": metrics["val_accuracy"], "wall_seconds": wall}
    print(member, json.dumps(record), flush=True)
    return record


@functools.cache
def kept_val(run: Path) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """A member run's kept probabilities by image path, and its classes: loaded once for all its ensembles."""
    classifier = Classifier.load(find_bundle(run), allow_int8=False)
    return kept_probabilities(run, classifier), tuple(classifier.info.classes)


def val_outputs(runs: list[Path]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member run's kept val probabilities (N, C), rows matched by image path in the first run's split order,
    and the images' class indices."""
    items = read_manifest(runs[0] / "split.csv").split_items("val")
    paths = [absolute_path(item.path) for item in items]
    outputs = []
    for run in runs:
        kept, classes = kept_val(run)
        missing = [path for path in paths if path not in kept]
        if missing:
            raise SystemExit(f"{run} kept no val output for {len(missing)} image(s) (e.g. {missing[0]}); retrain it")
        outputs.append(np.stack([kept[path] for path in paths]))
    index = {name: position for position, name in enumerate(classes)}
    return outputs, np.array([index[item.label] for item in items])


def weighting_record(runs: list[Path]) -> dict[str, Any]:
    """What weighting the members buys: val accuracy with weights fitted on all of val (optimistic: they fit the
    images they are scored on) and cross-fitted (each fold's weights fitted on the others), and the two log losses
    ``--weights auto`` compares."""
    outputs, labels = val_outputs(runs)
    weighing = weigh(outputs, labels)

    def accuracy(mixed: np.ndarray) -> float:
        return round(float(np.mean(np.argmax(mixed, axis=1) == labels)), 6)

    cross_fitted = weighing.cross_fitted
    return {"val_accuracy_fitted_weights": accuracy(sum(w * p for w, p in zip(weighing.fitted, outputs))),
            "val_accuracy_cross_fitted": None if cross_fitted is None else accuracy(cross_fitted),
            **weighing.evidence()}


def ensemble_record(members: dict[str, dict[str, Any]], combo: tuple[str, ...], out: Path) -> dict[str, Any]:
    chosen = [members[f"tf_efficientnet_{member}"] for member in combo]
    result = build_ensemble([Path(member["run"]) for member in chosen], out, overwrite=True)
    scores = result.scores["ensemble"]["val"]
    best = max(member["val_accuracy"] for member in chosen)
    walls = [member["wall_seconds"] for member in chosen]
    record = {"val_accuracy": scores["accuracy"], "val_log_loss": scores["log_loss"],
              **weighting_record([Path(member["run"]) for member in chosen]),
              "gain_over_best_member_points": round(100 * (scores["accuracy"] - best), 2),
              "members_wall_seconds": round(sum(walls), 1) if None not in walls else None,
              "weights": {name: round(weight, 3) for name, weight in result.weights.items()}}
    print("+".join(combo), json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--name", default="flowers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", default=",".join(short(member) for member in MEMBERS + LONGER),
                        help="The members to train (ensembles of other members are left out).")
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks/plans"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    chosen = [f"tf_efficientnet_{member}" for member in args.members.split(",")]
    members = {member: member_run(args.data, args.runs, args.name, member, args.seed) for member in chosen}
    ensembles = {"+".join(combo): ensemble_record(members, combo, args.runs / f"{args.name}-ensemble")
                 for combo in ENSEMBLES if all(f"tf_efficientnet_{member}" in members for member in combo)}
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results.update(cpu_model=cpu_model(), cpu_count=os.cpu_count())
    results[args.name] = {"seed": args.seed, "members": {short(name): {key: value for key, value in record.items()
                                                                       if key != "run"}
                                                         for name, record in members.items()},
                          "ensembles": ensembles}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
