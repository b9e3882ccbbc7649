"""The training commands: ``train``, ``tune``, ``models`` (what train accepts), ``compare`` and ``ensemble``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, cast

import typer

from imgclf import api
from imgclf.cli.options import (
    ArchiveOption,
    ModelArgsOption,
    Opt,
    RenameOption,
    Source,
    config_flags,
    config_help,
    parse_model_args,
    with_config_options,
)
from imgclf.cli.render.promotion import print_versions
from imgclf.cli.render.train import (
    print_comparison,
    print_ensemble,
    print_models,
    print_study,
    print_training_summary,
)
from imgclf.console import console
from imgclf.errors import ImgclfError
from imgclf.lifecycle.model_folder import is_model_folder

if TYPE_CHECKING:
    from imgclf.config import TrainConfig
    from imgclf.training import TrainResult


@with_config_options
def train(
    data: Annotated[Optional[str], typer.Argument(help=config_help("data"), show_default=False)] = None,
    config: Annotated[Optional[Path], Opt(help="YAML file of options (same names); flags win.", rich_help_panel="Run")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue an interrupted run exactly.", rich_help_panel="Run")] = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing --out run.", rich_help_panel="Run")] = False,
    dry_run: Annotated[bool, Opt(help="Print the resolved config and exit.", rich_help_panel="Run")] = False,
    model_args: ModelArgsOption = None,
    rename: RenameOption = None,
    archive: ArchiveOption = None,
    nproc: Annotated[Optional[int], Opt(help="Train as N processes on this machine (torchrun; gloo on CPU, one GPU "
                                        "each on CUDA). Several machines: docs/guides/distributed.md.",
                                        rich_help_panel="Machine", show_default=False)] = None,
    **config_values: object,
) -> None:
    """Train a classifier: good defaults from the data, every choice a flag, a model bundle at the end."""
    options: dict[str, Any] = {name: value for name, value in config_values.items() if value is not None}
    if model_args:
        options["model_args"] = parse_model_args(model_args)
    if rename:
        options["rename"] = rename
    if nproc is not None and not dry_run:
        raise typer.Exit(api.train_processes(nproc, sys.argv[1:], data, config=config, archive=archive,
                                             resume=resume, **options))
    if dry_run:
        resolved = cast("TrainConfig", api.train(data, config=config, archive=archive, dry_run=True, **options))
        print(resolved.to_yaml(), end="")
        return
    if resume is not None:
        given: dict[str, Any] = {"data": data} if data else {}
        trained = api.train(resume=resume, **given, **options)
    else:
        trained = api.train(data, config=config, archive=archive, overwrite=overwrite, **options)
    result = cast("TrainResult", trained)  # not a dry run: what training returned
    if result.interrupted:
        raise typer.Exit(130)
    if result.model_dir is not None:  # None: a torchrun rank other than 0, and rank 0 reports
        print_training_summary(result)


def models(
    filter: Annotated[str, typer.Argument(help="Substring or pattern (*, ?) of model names; or a model folder "
                                               "(models/shop) to list its versions, as imgclf versions does.")] = "",
    pretrained_only: Annotated[bool, Opt("--pretrained", help="Only models with weights on this machine.")] = False,
) -> None:
    """List the models train accepts, marking those with pretrained weights available here."""
    if filter and is_model_folder(filter):  # `imgclf models models/shop`: what a user who promoted into it would type
        print_versions(Path(filter), api.versions(filter))
        return
    found = [info for info in api.models(filter) if info.pretrained or not pretrained_only]
    if not found:
        raise ImgclfError(f"no model name matches '{filter}'; try a shorter filter, e.g. imgclf models resnet")
    print_models(found)


@with_config_options
def tune(
    data: Annotated[str, typer.Argument(help=config_help("data"), show_default=False)],
    out: Annotated[Optional[Path], Opt(help="Tune folder: study.db, trials/NNN, best.yaml, best/, tune.html "
                                            "(default: runs/tune-<data name>).", rich_help_panel="Run")] = None,
    trials: Annotated[Optional[int], Opt(help="Stop when the study has this many finished trials (pruned count; "
                                              "failed do not).", rich_help_panel="Run")] = None,
    time_budget: Annotated[Optional[str], Opt(help="Start no new trial after this long, e.g. 30m.",
                                              rich_help_panel="Run")] = None,
    storage: Annotated[Optional[str], Opt(help="Optuna storage shared by several workers: an RDB URL "
                                               "(sqlite:///x.db, postgresql://...) or journal:PATH "
                                               "(default: sqlite in --out).", rich_help_panel="Run")] = None,
    study_name: Annotated[Optional[str], Opt(help="Study in --storage (default: the --out folder's name).",
                                             rich_help_panel="Run")] = None,
    space: Annotated[Optional[Path], Opt(help="YAML search space: option: {low, high, log, step} or "
                                              "{choices: [...]} (default: ranges around the recipe).",
                                         rich_help_panel="Run")] = None,
    startup_trials: Annotated[int, Opt(help="Trials that run to the end before the median pruner stops any.",
                                       rich_help_panel="Run")] = 3,
    config: Annotated[Optional[Path], Opt(help="YAML file of fixed training options; flags win.",
                                          rich_help_panel="Run")] = None,
    model_args: ModelArgsOption = None,
    rename: RenameOption = None,
    archive: ArchiveOption = None,
    **config_values: object,
) -> None:
    """Search hyperparameters with Optuna: every trial a training run, pruned when hopeless; resumable, shareable."""
    options = _fixed_options(config, config_values)
    if model_args:
        options["model_args"] = parse_model_args(model_args)
    if rename:
        options["rename"] = rename
    result = api.tune(data, out=out, trials=trials, time_budget=time_budget, storage=storage, study_name=study_name,
                      space=space, startup_trials=startup_trials, archive=archive, **options)
    print_study(result)
    if result.interrupted:
        console.print(f"[yellow]interrupted; rerun the same command to resume the study in {result.storage}[/]")
        raise typer.Exit(130)


def _fixed_options(config: Path | None, flags: dict[str, object]) -> dict[str, Any]:
    """The training options every trial keeps: ``--config``'s, then the flags given (flags win)."""
    from imgclf.config import read_yaml

    from_file = read_yaml(config) if config else {}
    if from_file.get("time_budget"):
        raise ImgclfError(f"--config {config}: time_budget would be each trial's; tune's --time-budget is the "
                          "search's, so fix --epochs instead")
    # DATA and --out are tune's own (a best.yaml names its data and no out); unset keys fix nothing
    return {**{name: value for name, value in from_file.items()
               if value is not None and name not in ("data", "out", "time_budget")},
            **{name: value for name, value in flags.items() if value is not None}}


@config_flags(notes={"epochs": "On each backend.", "image_size": "Default: from the data.",
                     "batch_size": "Default: the model's recipe."},
              epochs=10, image_size=None, batch_size=None, augment=None, label_depth=None, seed=0, split_seed=0)
def compare(
    data: Source,
    backends: Annotated[str, Opt(help="Comma-separated backends to train on.")] = "torch,tensorflow",
    model: Annotated[str, Opt(help="A model both backends have: tutorial-cnn or a keras.applications name.")] = "tutorial-cnn",
    out: Annotated[Optional[Path], Opt(help="Folder for the runs and comparison.html (default: compare-<data>).")] = None,
    overwrite: Annotated[bool, Opt(help="Replace earlier runs in --out.")] = False,
    archive: ArchiveOption = None,
    **options: Any,
) -> None:
    """Train the same network with the same recipe, seed and split on each backend and compare them."""
    given = {name: value for name, value in options.items() if value is not None}  # unset: the recipe's
    result = api.compare(data, backends=backends, model=model, out=out, overwrite=overwrite, archive=archive, **given)
    print_comparison(model, result)


def ensemble(
    runs: Annotated[list[str], typer.Argument(help="Two or more run directories trained on the same classes and split.",
                                              show_default=False)],
    out: Annotated[Path, Opt(help="Folder for the ensemble (a model every command accepts).")],
    weights: Annotated[str, Opt(help="auto (fitted where that beats equal weights on val images the fit did not "
                                     "see), fit (minimise validation NLL) or equal.")] = "auto",
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out.")] = False,
    batch_size: Annotated[int, Opt(help="Images per batch.")] = 64,
) -> None:
    """Soft-voting ensemble of trained runs, weighted by what validation supports; shows the gain over each member."""
    print_ensemble(api.ensemble(runs, out, weights=weights, overwrite=overwrite, batch_size=batch_size))


COMMANDS = {
    "train": (train, "Examples: imgclf train photos/ --out runs/shop  |  imgclf train cifar10 --time-budget 5m  |  "
                     "imgclf train photos/ --model resnet50 --pretrained --weights resnet50.safetensors "
                     "--strategy finetune  |  imgclf train photos/ --quality high  |  imgclf train --resume runs/shop"),
    "models": (models, "Examples: imgclf models  |  imgclf models efficientnet  |  imgclf models 'resnet*' --pretrained"),
    "tune": (tune, "Examples: imgclf tune photos/ --trials 20 --out runs/tune-shop  |  "
                   "imgclf tune photos/ --time-budget 30m --model fastnet --space space.yaml  |  "
                   "imgclf tune photos/ --trials 40 --storage journal:study.log --study-name shop "
                   "(run it in several shells)"),
    "compare": (compare, "Example: imgclf compare photos/ --backends torch,tensorflow --model tutorial-cnn --epochs 10"),
    "ensemble": (ensemble, "Examples: imgclf ensemble runs/a runs/b runs/c --out runs/abc  |  "
                           "imgclf ensemble runs/a runs/b --out runs/ab --weights equal"),
}
