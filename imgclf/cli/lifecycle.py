"""The commands of a model's life after training: ``update`` (new photos or classes, behind a gate) and ``diff``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from imgclf import api
from imgclf.cli.options import CorrectionsOption, Opt, RenameOption
from imgclf.cli.render.lifecycle import print_diff, print_gate


def update(
    run: Annotated[str, typer.Argument(help="The trained run to start from (runs/NAME).", show_default=False)],
    add: Annotated[str, Opt("--add", help="New labelled images: a folder of class folders or a CSV manifest, as "
                                          "train reads them (new classes, more photos, corrections).",
                            show_default=False)],
    out: Annotated[str, Opt("--out", help="Folder for the updated run.", show_default=False)],
    time_budget: Annotated[Optional[str], Opt(help="A from-scratch model's training time on old + new images, "
                                                   "e.g. 1m (default: the run's own schedule).")] = None,
    max_drop: Annotated[float, Opt(help="Points of recall (multi-label: AP) an old class may lose on the run's "
                                        "held-out images before the update is refused.")] = 2.0,
    force: Annotated[bool, Opt("--force", help="Keep the update even if the gate fails (recorded in gate.json "
                                               "and the lineage).")] = False,
    corrections: CorrectionsOption = None,
    rename: RenameOption = None,
    class_weights: Annotated[Optional[str], Opt(help="Loss weights per class for the update, none or auto "
                                                     "(inverse frequency): auto helps a new class with far fewer "
                                                     "photos than the old ones, at some cost to the old classes "
                                                     "(default: the run's).", show_default=False)] = None,
) -> None:
    """Teach a trained model new photos or classes as a new run, refused if an old class gets worse."""
    result = api.update(run, add, out, time_budget=time_budget, max_drop=max_drop, force=force,
                        corrections=str(corrections) if corrections else None, rename=rename,
                        class_weights=class_weights)
    print_gate(result)


def diff(
    run_a: Annotated[str, typer.Argument(help="The earlier run.", show_default=False)],
    run_b: Annotated[str, typer.Argument(help="The later run.", show_default=False)],
    as_json: Annotated[bool, Opt("--json", help="Print every difference as JSON on stdout.")] = False,
) -> None:
    """What changed between two runs: images added, removed, relabelled, moved between splits, and each class's score."""
    result = api.diff(run_a, run_b)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_diff(result)


COMMANDS = {
    "update": (update, "Examples: imgclf update runs/shop --add new_classes/ --out runs/shop-2  |  "
                       "imgclf update runs/cifar --add more.csv --out runs/cifar-2 --time-budget 1m --max-drop 1"),
    "diff": (diff, "Examples: imgclf diff runs/shop runs/shop-2  |  imgclf diff runs/shop runs/shop-2 --json"),
}
