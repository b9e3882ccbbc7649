"""How ``train``, ``models``, ``tune``, ``compare`` and ``ensemble`` show their results: Rich tables on the console."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from imgclf.cli.render import TABLE_LIMIT
from imgclf.console import console

if TYPE_CHECKING:
    from imgclf import api
    from imgclf.training import TrainResult

def print_models(found: list[api.ModelInfo]) -> None:
    """The model names with family, default size and the pretrained weights found on this machine."""
    table = Table()
    table.add_column("model")
    table.add_column("family")
    table.add_column("size", justify="right")
    table.add_column("pretrained weights here")
    for info in found:
        table.add_row(info.name, info.family, str(info.default_size or ""), info.pretrained or "")
    console.print(table)
    console.print(f"{len(found):,} model(s); weights come from --weights FILE, offline packages, or timm's hub when online")


def print_study(result: api.TuneResult) -> None:
    """The study's trials (the first TABLE_LIMIT) and where the best one's config, model and page are."""
    board = Table(title=f"study {result.study_name} ({result.monitor})", title_justify="left")
    for name in ("trial", "state", "score", "params", "seconds"):
        board.add_column(name, justify="right" if name in ("trial", "score", "seconds") else "left")
    for row in result.trials[:TABLE_LIMIT]:
        board.add_row(str(row["trial"]), row["state"].lower(), "" if row["score"] is None else f"{row['score']:.4f}",
                      escape(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row["params"].items())),
                      "" if row["seconds"] is None else f"{row['seconds']:.1f}")
    console.print(board)
    if result.best is not None:
        console.print(f"best: trial {result.best['trial']} ({result.monitor} {result.best['score']:.4f}); "
                      f"config {result.out / 'best.yaml'}, model {result.out / 'best'}, page {result.out / 'tune.html'}")


def print_comparison(model: str, result: api.Comparison) -> None:
    """Accuracy, speed and size of the same network trained on each backend, side by side."""
    table = Table(title=f"{model}: {' vs '.join(item.backend for item in result.results)}")
    table.add_column("")
    for item in result.results:
        table.add_column(item.backend, justify="right")
    rows: list[tuple[str, Callable[[Any], str]]] = [
        (f"{split} accuracy", lambda item, split=split: f"{item.metrics[f'{split}_accuracy']:.2%}")  # type: ignore[misc]  # the default binds each split
        for split in ("val", "test") if all(f"{split}_accuracy" in item.metrics for item in result.results)]
    rows += [("seconds per epoch", lambda item: f"{item.seconds_per_epoch:.2f}"),
             ("inference images/s", lambda item: f"{item.inference_images_per_second:,.0f}"),
             ("parameters", lambda item: f"{item.parameters:,}")]
    for label, cell in rows:
        table.add_row(label, *(cell(item) for item in result.results))
    console.print(table)
    if not result.parameters_match:
        console.print("[yellow]warning: the parameter counts differ; the networks are not the same[/]")
    console.print(f"report: {result.html}")


def print_ensemble(result: api.EnsembleResult) -> None:
    """Each member's and the ensemble's scores per split, and the ensemble's gain over the best member."""
    splits = list(result.scores["ensemble"])
    table = Table(title=f"ensemble in {result.out}", title_justify="left")
    table.add_column("model")
    table.add_column("weight", justify="right")
    for split in splits:
        table.add_column(f"{split} accuracy", justify="right")
        table.add_column(f"{split} log loss", justify="right")
    for name, scores in result.scores.items():
        weight = f"{result.weights[name]:.3f}" if name in result.weights else ""
        table.add_row(name, weight, *(cell for split in splits for cell in (f"{scores[split]['accuracy']:.2%}",
                                                                            f"{scores[split]['log_loss']:.4f}")))
    console.print(table)
    held_out = "test" if "test" in splits else "val"
    best = max((scores[held_out]["accuracy"], name) for name, scores in result.scores.items() if name != "ensemble")
    gain = result.scores["ensemble"][held_out]["accuracy"] - best[0]
    console.print(f"{held_out}: ensemble {gain * 100:+.2f} points over the best member ({best[1]}); "
                  f"report: {result.out / 'report.html'}")


def _calibration_rows(table: Table, calibration: dict[str, Any]) -> None:
    """What temperature scaling optimised (val log loss) and what it did, ECE beside it; or why T stayed 1."""
    if calibration.get("kept_one"):
        table.add_row("temperature", calibration["kept_one"])
        return
    table.add_row(f"temperature T = {calibration['temperature']:.3f}", "fitted on val log loss")
    table.add_row("val log loss (before -> after T)", f"{calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}")
    table.add_row("val ECE (before -> after T)", f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")


def print_training_summary(result: TrainResult) -> None:
    """A finished run's epochs, time, held-out scores, thresholds, calibration and decision, and where it is."""
    config, metrics = result.config, result.metrics
    if config.ensemble:  # --ensemble: the members' and the ensemble's scores
        from imgclf.workflows.ensemble import EnsembleResult

        print_ensemble(EnsembleResult(result.run_dir, **metrics["ensemble"]))
        console.print(f"trained in {metrics['train_seconds'] / 60:.1f} min; model: {result.model_dir}")
        return
    table = Table(title=f"{config.model} on {Path(config.data).name}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    seconds = metrics["train_seconds"]
    table.add_row("epochs", f"{metrics['epochs_trained']} (best {metrics['best_epoch']})"
                  + (", stopped early" if result.stopped_early else ""))
    table.add_row("training time", f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min")
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            tta = " (TTA)" if config.tta else ""
            table.add_row(f"{split} accuracy{tta}", f"{metrics[f'{split}_accuracy']:.2%} of {metrics[f'{split}_images']:,}")
            table.add_row(f"{split} loss", f"{metrics[f'{split}_loss']:.4f}")
    if "thresholds" in metrics:
        chosen = metrics["thresholds"]
        table.add_row(f"label thresholds ({metrics['threshold_goal']}, val)",
                      ", ".join(f"{name} {row['threshold']:.2f}" for name, row in list(chosen.items())[:6])
                      + (", ..." if len(chosen) > 6 else ""))
    if "calibration" in metrics:
        _calibration_rows(table, metrics["calibration"])
    if "decision" in metrics:
        decision = metrics["decision"]
        table.add_row(f"decision ({decision['goal']})",
                      f"{decision['positive']} at P >= {decision['threshold']:.4g}: val precision "
                      f"{decision['val_precision']:.3f}, recall {decision['val_recall']:.3f}")
    table.add_row("run", str(result.run_dir))
    table.add_row("model", str(result.model_dir))
    console.print(table)
