"""The commands that measure a trained model: ``evaluate``, ``report`` and ``calibrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgclf import api
from imgclf.cli.options import CorrectionsOption, Model, Opt, RenameOption, RuntimeOption, TtaOption, config_help
from imgclf.cli.render.evaluate import print_calibration, print_evaluation
from imgclf.console import console


def evaluate(
    model: Model,
    data: Annotated[Optional[str], typer.Argument(help="Labelled images (any source); default: the run's test split.",
                                                  show_default=False)] = None,
    out: Annotated[Optional[Path], Opt(help="Folder for metrics.json and pictures.")] = None,
    split: Annotated[Optional[str], Opt(help="Which split of DATA: train, val, test or all (default: test, else val, else all).")] = None,
    label_issues: Annotated[bool, Opt("--label-issues", help="List images whose label the model contradicts.")] = False,
    folds: Annotated[Optional[int], Opt(help="Label issues from K-fold cross-validation (retrains K models).")] = None,
    tta: TtaOption = None,
    batch_size: Annotated[int, Opt(help="Images per batch.")] = 64,
    runtime: RuntimeOption = "auto",
    as_json: Annotated[bool, Opt("--json", help="Print metrics.json on stdout.")] = False,
    track: Annotated[Optional[str], Opt(help=config_help("track"))] = None,
    corrections: CorrectionsOption = None,
    rename: RenameOption = None,
) -> None:
    """Metrics, confusion matrix, ROC, calibration and worst mistakes of a model on labelled images."""
    result = api.evaluate(model, data, out=out, split=split, tta=tta, label_issues=label_issues, folds=folds,
                          batch_size=batch_size, runtime=runtime, track=track, corrections=corrections,
                          rename=rename or ())
    if as_json:
        print(json.dumps(result.metrics, indent=2))
        return
    print_evaluation(result, label_issues=label_issues or bool(folds))


def report(
    run: Annotated[str, typer.Argument(help="A run directory (runs/NAME).", show_default=False)],
    label_issues: Annotated[bool, Opt("--label-issues/--no-label-issues", help="Include likely label errors.")] = True,
) -> None:
    """Re-evaluate a run on its held-out split and rewrite its self-contained report.html."""
    console.print(f"wrote {api.report(run, label_issues=label_issues)}")


def calibrate(
    model: Model,
    data: Annotated[Optional[str], Opt(help="Labelled held-out images (any source); default: the run's split.csv.")] = None,
    split: Annotated[str, Opt(help="Which split of the data to fit on.")] = "val",
    batch_size: Annotated[int, Opt(help="Images per batch.")] = 64,
) -> None:
    """Fit temperature scaling on validation images and store it in the bundle (training does this itself)."""
    print_calibration(api.calibrate(model, data, split=split, batch_size=batch_size), split)


COMMANDS = {
    "evaluate": (evaluate, "Examples: imgclf evaluate runs/shop  |  imgclf evaluate runs/shop photos/test --label-issues"),
    "report": (report, "Example: imgclf report runs/shop"),
    "calibrate": (calibrate, "Examples: imgclf calibrate runs/shop  |  imgclf calibrate runs/shop --data photos/ "
                             "--split val"),
}
