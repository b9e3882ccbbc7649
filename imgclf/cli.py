"""The ``imgclf`` command: parse options, call :mod:`imgclf.api`, render with Rich.

Errors a user can fix are printed as one line; ``--debug`` (or
``IMGCLF_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import fields
from inspect import Parameter, Signature, signature
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree
from typer._click.exceptions import ClickException  # typer 0.29 bundles its own click; standalone click's never match

from imgclf import api
from imgclf.cli_embeddings import DeviceOption, NprocOption, start_processes
from imgclf.cli_embeddings import register as register_embedding_commands
from imgclf.config import PANELS, TrainConfig
from imgclf.console import console
from imgclf.data.augment_presets import PRESETS
from imgclf.data.decode import DEFAULT_MAX_PIXELS
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, disk_error
from imgclf.version import __version__

if TYPE_CHECKING:
    from imgclf.deploy.predict import PredictionRow
    from imgclf.evaluation.evaluate import Evaluation

app = typer.Typer(
    name="imgclf",
    help="From a folder of labelled images to a trained, evaluated, deployed image classifier.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_debug = False  # main() reads IMGCLF_DEBUG; --debug turns it on for one run

# Options shared by every command that reads a dataset: one name, one meaning.
Source = Annotated[str, typer.Argument(help="A folder of class folders, a CSV manifest, or cifar10 / cifar100.",
                                       show_default=False)]
ArchiveOption = Annotated[Optional[Path], typer.Option("--from", help="Local copy of the CIFAR archive (no download).")]
Seed = Annotated[int, typer.Option(help="Seed for splits and augmentation.")]


def _version(value: bool) -> None:
    if value:
        print(f"imgclf {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """From a folder of labelled images to a trained, evaluated, deployed image classifier."""
    global _debug
    _debug = _debug or debug


@app.command(epilog="Examples: imgclf inspect photos/ --out inspect-photos  |  imgclf inspect photos/ --near-duplicates")
def inspect(
    source: Source,
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.json, samples.png, broken_files.txt.")] = None,
    archive: ArchiveOption = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    near_duplicates: Annotated[bool, typer.Option(
        "--near-duplicates", help="Also find resized, re-encoded or mirrored copies by image embeddings.")] = False,
    embedding_model: Annotated[str, typer.Option(help="Backbone or trained model for --near-duplicates.")] =
        api.DEFAULT_EMBEDDING_MODEL,
    similarity_threshold: Annotated[Optional[float], typer.Option(
        help="Lowest similarity (0..1) reported by --near-duplicates (default 0.9).")] = None,
) -> None:
    """Count classes per split as given, check every file, find duplicates and leakage."""
    result = api.inspect(source, out=out, archive=archive, max_pixels=max_pixels, near_duplicates=near_duplicates,
                         embedding_model=embedding_model, similarity_threshold=similarity_threshold)
    if as_json:
        print(json.dumps(result.report.to_json(), indent=2))
        return
    _print_report(result)


def _print_report(result: api.InspectResult) -> None:
    report = result.report
    console.print(f"[bold]{report.source}[/]: {len(report.classes)} classes, "
                  f"{sum(report.split_totals.values()):,} images", soft_wrap=True)
    table = Table()
    table.add_column("class")
    for split in report.splits:
        table.add_column(split, justify="right")
    for name in report.classes:
        table.add_row(name, *(f"{report.counts[name].get(split, 0):,}" for split in report.splits))
    table.add_section()
    table.add_row("[bold]total", *(f"[bold]{report.split_totals[split]:,}" for split in report.splits))
    console.print(table)
    if report.tree:
        console.print(_category_tree(report.tree))
    if report.sizes:
        width, height = report.sizes["width"], report.sizes["height"]
        console.print(f"sizes: width {width['min']}-{width['max']} (median {width['median']:g}), "
                      f"height {height['min']}-{height['max']} (median {height['median']:g}); "
                      f"modes: {', '.join(f'{mode} {count:,}' for mode, count in report.modes.items())}")
    if report.label_sets is not None:
        per_image = ", ".join(f"{count}: {images:,}" for count, images in report.label_sets["labels_per_image"].items())
        console.print(f"multi-label: images per number of labels {per_image}")
        pairs = report.label_sets["top_pairs"]
        if pairs:
            console.print("labels most often together: " + ", ".join(
                f"{escape(first)} + {escape(second)} {pair['images']:,}"
                for pair in pairs for first, second in [pair["labels"]]), soft_wrap=True)
    if report.ignored:
        console.print(f"ignored {len(report.ignored)} file(s) that are not images inside class folders")
    for warning in report.warnings:  # one line each, however long: they name files, which may hold [brackets]
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.broken_list:
        console.print(f"broken files listed in {result.broken_list}")
    if report.near_duplicates is not None:
        console.print(f"near-duplicate pairs: {len(report.near_duplicates)}"
                      + (f", drawn in {result.near_duplicates_picture}" if result.near_duplicates_picture else ""))
    console.print(f"report: {result.out / 'report.json'}" + (f", samples: {result.samples}" if result.samples else ""))


def _category_tree(counts: dict[str, int]) -> Tree:
    """The category paths as a Rich tree, each node with the images under it (parents before children: sorted)."""
    tree = Tree("[bold]categories[/]")
    nodes: dict[str, Tree] = {}
    for path, count in counts.items():
        parent, _, name = path.rpartition("/")
        nodes[path] = nodes.get(parent, tree).add(f"{escape(name)} [dim]{count:,}[/]")
    return tree


@app.command("preview-augment", epilog="Example: imgclf preview-augment photos/ --augment strong --out aug.png")
def preview_augment(
    source: Source,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment-preview.png"),
    augment: Annotated[str, typer.Option(help=f"Preset: {', '.join(PRESETS)}.")] = "standard",
    index: Annotated[int, typer.Option(help="Which training image to show.")] = 0,
    image_size: Annotated[Optional[int], typer.Option(help="Side in pixels (default: the image's, at most 224).")] = None,
    archive: ArchiveOption = None,
    seed: Seed = 0,
    grayscale: Annotated[bool, typer.Option(help="Decode as one grey channel.")] = False,
) -> None:
    """Draw one image augmented nine times, to see what a preset does."""
    path = api.preview_augment(source, out, augment=augment, index=index, seed=seed, image_size=image_size,
                               archive=archive, grayscale=grayscale)
    console.print(f"wrote {path}")


Opt = typer.Option  # brevity in the option lists below

_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def config_options(config_class: type[TrainConfig] = TrainConfig, skip: tuple[str, ...] = ()) -> list[Parameter]:
    """One ``--flag`` per config field, from the field's type, help, choices and panel.

    Every flag defaults to None ("not given"), so a YAML ``--config`` or the
    config's own default applies; bool fields get ``--x/--no-x``.
    """
    parameters = []
    for item in sorted(fields(config_class), key=lambda item: PANELS.index(item.metadata["panel"])):
        kind = _KINDS.get(str(item.type).split("|")[0].strip())
        if item.name in skip or kind is None:  # a dict (model_args) needs the command's own KEY=VALUE flag
            continue
        choices = item.metadata["choices"]
        text = item.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
        option = typer.Option(help=escape(text), rich_help_panel=item.metadata["panel"], show_default=False)
        parameters.append(Parameter(item.name, Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Optional[kind], option]))
    return parameters


def with_config_options(command: Callable[..., None], config_class: type[TrainConfig] = TrainConfig
                        ) -> Callable[..., None]:
    """``command``'s own parameters, then :func:`config_options` for its ``**options``: what Typer builds the
    command from. The options the command declares itself (such as DATA) are not generated twice."""
    own = [parameter for parameter in signature(command, eval_str=True).parameters.values()
           if parameter.kind is not Parameter.VAR_KEYWORD]
    generated = config_options(config_class, skip=tuple(parameter.name for parameter in own))
    command.__signature__ = Signature([*own, *generated])  # type: ignore[attr-defined]
    return command


def _config_help(name: str) -> str:
    """The declared help of a field whose flag the command writes itself."""
    return next(item for item in fields(TrainConfig) if item.name == name).metadata["help"]


@app.command(epilog="Examples: imgclf train photos/ --out runs/shop  |  imgclf train cifar10 --time-budget 5m  |  "
                    "imgclf train photos/ --model resnet50 --pretrained --weights resnet50.safetensors --strategy finetune  |  "
                    "imgclf train --resume runs/shop")
@with_config_options
def train(
    data: Annotated[Optional[str], typer.Argument(help=_config_help("data"), show_default=False)] = None,
    config: Annotated[Optional[Path], Opt(help="YAML file of options (same names); flags win.", rich_help_panel="Run")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue an interrupted run exactly.", rich_help_panel="Run")] = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing --out run.", rich_help_panel="Run")] = False,
    dry_run: Annotated[bool, Opt(help="Print the resolved config and exit.", rich_help_panel="Run")] = False,
    model_args: Annotated[Optional[list[str]], Opt("--model-arg", help=_config_help("model_args"),
                                                   rich_help_panel="Model")] = None,
    archive: ArchiveOption = None,
    nproc: Annotated[Optional[int], Opt(help="Train as N processes on this machine (torchrun; gloo on CPU, one GPU "
                                        "each on CUDA). Several machines: see README, More than one machine.",
                                        rich_help_panel="Machine", show_default=False)] = None,
    **config_values: object,
) -> None:
    """Train a classifier: good defaults from the data, every choice a flag, a model bundle at the end."""
    options = {name: value for name, value in config_values.items() if value is not None}
    if model_args:
        options["model_args"] = _parse_model_args(model_args)
    if nproc is not None and not dry_run:
        raise typer.Exit(api.train_processes(nproc, sys.argv[1:], data, config=config, archive=archive,
                                             resume=resume, **options))
    if dry_run:
        resolved = api.train(data, config=config, archive=archive, dry_run=True, **options)
        print(resolved.to_yaml(), end="")
        return
    if resume is not None:
        result = api.train(resume=resume, **({"data": data} if data else {}), **options)
    else:
        result = api.train(data, config=config, archive=archive, overwrite=overwrite, **options)
    if result.interrupted:
        raise typer.Exit(130)


def _parse_model_args(pairs: list[str]) -> dict[str, object]:
    import yaml

    parsed: dict[str, object] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ImgclfError(f"--model-arg '{pair}' should be KEY=VALUE, e.g. --model-arg dropout=0.2")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ImgclfError(f"--model-arg '{pair}': cannot read the value; write numbers, true/false or [a, b]") from None
    return parsed


@app.command(epilog="Examples: imgclf models  |  imgclf models efficientnet  |  imgclf models 'resnet*' --pretrained")
def models(
    filter: Annotated[str, typer.Argument(help="Substring or pattern (*, ?) of model names.")] = "",
    pretrained_only: Annotated[bool, typer.Option("--pretrained", help="Only models with weights on this machine.")] = False,
) -> None:
    """List the models train accepts, marking those with pretrained weights available here."""
    found = [info for info in api.models(filter) if info.pretrained or not pretrained_only]
    if not found:
        raise ImgclfError(f"no model name matches '{filter}'; try a shorter filter, e.g. imgclf models resnet")
    table = Table()
    table.add_column("model")
    table.add_column("family")
    table.add_column("size", justify="right")
    table.add_column("pretrained weights here")
    for info in found:
        table.add_row(info.name, info.family, str(info.default_size or ""), info.pretrained or "")
    console.print(table)
    console.print(f"{len(found):,} model(s); weights come from --weights FILE, offline packages, or timm's hub when online")


Model = Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model bundle folder.", show_default=False)]
TtaOption = Annotated[Optional[bool], Opt("--tta/--no-tta", help="Flip averaging (default: as the model trained).",
                                          show_default=False)]
RuntimeOption = Annotated[str, Opt(help="torch (keras for a TensorFlow model), onnx, onnx-int8, openvino, openvino-int8 "
                                          "(files imgclf export wrote into the bundle), or auto: the fastest measured on "
                                          "this machine (at export, else once on first use, then remembered).")]
TABLE_LIMIT = 20  # up to this many images, predict prints a probability table per image


@app.command(epilog="Examples: imgclf evaluate runs/shop  |  imgclf evaluate runs/shop photos/test --label-issues")
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
    track: Annotated[Optional[str], Opt(help="Log the evaluation to an experiment tracker: mlflow (to "
                                             "MLFLOW_TRACKING_URI; pip install 'imgclf[track]').")] = None,
) -> None:
    """Metrics, confusion matrix, ROC, calibration and worst mistakes of a model on labelled images."""
    result = api.evaluate(model, data, out=out, split=split, tta=tta, label_issues=label_issues, folds=folds,
                          batch_size=batch_size, runtime=runtime, track=track)
    if as_json:
        print(json.dumps(result.metrics, indent=2))
        return
    metrics = result.metrics
    if metrics.get("multilabel"):
        _print_multilabel_metrics(result)
    else:
        _print_single_label_metrics(result)
    if label_issues or folds:
        console.print(f"likely label errors: {len(result.label_issues)} (list: {result.out / 'label_issues.csv'})")
    console.print(f"wrote {result.out / 'metrics.json'} and pictures in {result.out}")


def _print_multilabel_metrics(result: Evaluation) -> None:
    metrics = result.metrics
    table = Table(title=f"{metrics['images']:,} images ({result.split}), labels at their thresholds "
                        f"({escape(str(metrics['threshold_goal']))})")
    for name in ("label", "AP", "threshold", "precision", "recall", "F1", "support"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for name, row in metrics["per_label"].items():
        ap = "" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        table.add_row(escape(name), ap, f"{row['threshold']:.3f}", f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}", f"{row['support']:,}")
    console.print(table)
    half, cardinality = metrics["at_0.5"], metrics["label_cardinality"]
    console.print(f"mAP {metrics['mean_average_precision'] or 0:.4f}  micro-F1 {metrics['micro_f1']:.4f} "
                  f"(at 0.5: {half['micro_f1']:.4f})  macro-F1 {metrics['macro_f1']:.4f}  samples-F1 "
                  f"{metrics['samples_f1']:.4f}  subset accuracy {metrics['subset_accuracy']:.2%} (at 0.5: "
                  f"{half['subset_accuracy']:.2%})  Hamming loss {metrics['hamming_loss']:.4f}  labels per image "
                  f"{cardinality['predicted']:.2f} said / {cardinality['true']:.2f} true")


def _print_single_label_metrics(result: Evaluation) -> None:
    metrics = result.metrics
    table = Table(title=f"{metrics['images']:,} images ({result.split})")
    table.add_column("class")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", f"{row['support']:,}")
    table.add_section()
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        table.add_row(label, *(f"{metrics[key][name]:.3f}" for name in ("precision", "recall", "f1")), "")
    console.print(table)
    extras = [f"accuracy {metrics['accuracy']:.2%}"]
    extras += [f"{name.replace('_', '-').replace('-accuracy', '')} {metrics[name]:.2%}" for name in sorted(metrics)
               if name.startswith("top_")]
    if metrics.get("roc_auc_ovr") is not None:
        extras.append(f"ROC-AUC {metrics['roc_auc_ovr']:.4f}")
    extras += [f"log loss {metrics['log_loss']:.4f}", f"ECE {metrics['expected_calibration_error']:.4f}"]
    console.print("  ".join(extras))
    if "decision" in metrics:
        decision = metrics["decision"]
        console.print(f"decision: {decision['positive']} at P >= {decision['threshold']:.4g} ({decision['goal']}): "
                      f"precision {decision['precision']:.3f}, recall {decision['recall']:.3f}, "
                      f"F1 {decision['f1']:.3f}, false positive rate {decision['false_positive_rate']:.3f}")
    for level in metrics.get("levels", []):
        console.print(f"level {level['depth']} ({len(level['classes'])} categories): accuracy {level['accuracy']:.2%}  "
                      f"macro F1 {level['macro_f1']:.3f}")
    for pair in metrics["most_confused"][:3]:
        console.print(f"confused: {pair['true']} → {pair['predicted']} ({pair['count']})")


@app.command(epilog="Examples: imgclf predict runs/shop cat.jpg  |  imgclf predict runs/shop photos/ --out preds.csv  |  "
                    "find . -name '*.jpg' | imgclf predict runs/shop - --format jsonl  |  "
                    "imgclf predict runs/shop photos/ --out preds.csv --nproc 2")
def predict(
    model: Model,
    inputs: Annotated[list[str], typer.Argument(help="Files, folders, globs, @list.txt, or - for paths on stdin.",
                                                show_default=False)],
    top_k: Annotated[int, Opt(help="Classes per image.")] = 5,
    min_confidence: Annotated[float, Opt(help="Answer 'unknown' below this top probability (a category model: the "
                                              "deepest level at least this sure, e.g. Fruit/Apple; multi-label: say "
                                              "no label below it, whatever its threshold).")] = 0.0,
    output_format: Annotated[Optional[str], Opt("--format", help="csv, json or jsonl (default: a table for a few "
                                                                  "images, else from --out's suffix).")] = None,
    out: Annotated[Optional[Path], Opt(help="File for the predictions (default: stdout).")] = None,
    tta: TtaOption = None,
    batch_size: Annotated[int, Opt(help="Images per batch.")] = 64,
    runtime: RuntimeOption = "auto",
    device: DeviceOption = "auto",
    nproc: NprocOption = None,
) -> None:
    """Classify images: a probability table for a few, CSV/JSON/JSONL streamed for many."""
    from imgclf.deploy.bundle import find_bundle, read_bundle_info
    from imgclf.deploy.writers import open_writer

    if output_format is None and out is not None:
        output_format = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}.get(out.suffix.lower())
        if output_format is None:
            raise ImgclfError(f"--out {out}: cannot tell the format from the suffix; add --format csv, json or jsonl")
    start_processes(nproc, device, lambda: _check_distributed_predict(model, inputs, output_format))
    from imgclf.distributed import current_world

    if current_world().is_distributed:  # a rank of a torchrun job
        _check_distributed_predict(model, inputs, output_format)
        summary = api.predict_in_parts(model, inputs, output_format, out, top_k=top_k,  # type: ignore[arg-type]
                                       min_confidence=min_confidence, tta=tta, batch_size=batch_size,
                                       device=device, runtime=runtime)
        if summary is not None:
            console.print(f"{summary.images:,} images in {summary.seconds:.1f} s ({summary.rate:,.0f} img/s) on "
                          f"{summary.processes} processes, {summary.errors} unreadable"
                          + (f"; {summary.resumed:,} from an interrupted run's parts" if summary.resumed else ""))
        return
    from imgclf.deploy.predict import expand_inputs

    paths = expand_inputs(inputs)
    if output_format is None and len(paths) > TABLE_LIMIT:
        raise ImgclfError(f"{len(paths):,} images are too many for tables; add --out preds.csv or --format jsonl")
    rows = api.predict(model, paths, top_k=top_k, min_confidence=min_confidence, tta=tta, batch_size=batch_size,
                       device=device, runtime=runtime)
    if output_format is None:
        _print_prediction_tables(list(rows))
        return
    info = read_bundle_info(find_bundle(model))
    with open_writer(output_format, out, info.classes, info.multilabel) as write:
        _stream_predictions(rows, write, len(paths))


def _check_distributed_predict(model: str, inputs: list[str], output_format: str | None) -> None:
    """What every process of a distributed predict needs: an output to join the parts into, and a torch model."""
    from imgclf.deploy.writers import FORMATS

    if output_format is None:
        raise ImgclfError("a predict split among processes writes one file: add --out preds.csv (or .json, .jsonl) "
                          "or --format csv|json|jsonl")
    if output_format not in FORMATS:
        raise ImgclfError(f"--format '{output_format}' is not one of {', '.join(FORMATS)}")
    api.check_distributable(model, list(inputs))


def _print_prediction_tables(rows: list[PredictionRow]) -> None:
    for row in rows:
        if row.error:
            console.print(f"[red]{row.path}: {row.error}[/]")
            continue
        answer = row.prediction if row.labels is None else ", ".join(row.labels) or "(no label)"
        path = "  ›  ".join(f"{escape(level.label.rpartition('/')[2])} {level.probability:.0%}" for level in row.levels)
        # the heading is a line of its own: as a table title it would wrap at the narrow table's width, mid-path
        console.print(f"{escape(str(row.path))} → [bold]{escape(answer)}[/]", soft_wrap=True)
        table = Table(caption=path or None, caption_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        if row.labels is not None:
            table.add_column("said", justify="center")
        for name, probability in row.top:
            said = ["yes" if name in row.labels else ""] if row.labels is not None else []
            table.add_row(escape(name), f"{probability:.2%}", *said)
        console.print(table)


def _stream_predictions(rows: Iterable[PredictionRow], write: Callable[[PredictionRow], None], total: int) -> None:
    import time

    from imgclf.console import progress_bar

    started, count, errors = time.perf_counter(), 0, 0
    with progress_bar() as bar:
        task = bar.add_task("Predicting", total=total)
        for row in rows:
            write(row)
            count += 1
            errors += bool(row.error)
            bar.advance(task)
    seconds = time.perf_counter() - started
    console.print(f"{count:,} images in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} img/s), {errors} unreadable")


@app.command(epilog="Example: imgclf compare photos/ --backends torch,tensorflow --model tutorial-cnn --epochs 10")
def compare(
    data: Source,
    backends: Annotated[str, Opt(help="Comma-separated backends to train on.")] = "torch,tensorflow",
    model: Annotated[str, Opt(help="A model both backends have: tutorial-cnn or a keras.applications name.")] = "tutorial-cnn",
    epochs: Annotated[float, Opt(help="Epochs on each backend.")] = 10,
    image_size: Annotated[Optional[int], Opt(help="Input side in pixels (default: from the data).")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Images per step (default: the model's recipe).")] = None,
    augment: Annotated[Optional[str], Opt(help=f"Augmentation preset: {', '.join(PRESETS)}.")] = None,
    label_depth: Annotated[Optional[int], Opt(help="Train on category paths (animals/dog) cut to this many levels.")] = None,
    seed: Seed = 0,
    out: Annotated[Optional[Path], Opt(help="Folder for the runs and comparison.html (default: compare-<data>).")] = None,
    overwrite: Annotated[bool, Opt(help="Replace earlier runs in --out.")] = False,
    archive: ArchiveOption = None,
) -> None:
    """Train the same network with the same recipe, seed and split on each backend and compare them."""
    options = {name: value for name, value in (("image_size", image_size), ("batch_size", batch_size),
                                               ("augment", augment), ("label_depth", label_depth)) if value is not None}
    result = api.compare(data, backends=backends, model=model, epochs=epochs, out=out, overwrite=overwrite,
                         archive=archive, seed=seed, **options)
    table = Table(title=f"{model}: {' vs '.join(item.backend for item in result.results)}")
    table.add_column("")
    for item in result.results:
        table.add_column(item.backend, justify="right")
    rows = [(f"{split} accuracy", lambda item, split=split: f"{item.metrics[f'{split}_accuracy']:.2%}")
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


@app.command(epilog="Example: imgclf report runs/shop")
def report(
    run: Annotated[str, typer.Argument(help="A run directory (runs/NAME).", show_default=False)],
    label_issues: Annotated[bool, Opt("--label-issues/--no-label-issues", help="Include likely label errors.")] = True,
) -> None:
    """Re-evaluate a run on its held-out split and rewrite its self-contained report.html."""
    console.print(f"wrote {api.report(run, label_issues=label_issues)}")


@app.command(epilog="Examples: imgclf calibrate runs/shop  |  imgclf calibrate runs/shop --data photos/ --split val")
def calibrate(
    model: Model,
    data: Annotated[Optional[str], Opt(help="Labelled held-out images (any source); default: the run's split.csv.")] = None,
    split: Annotated[str, Opt(help="Which split of the data to fit on.")] = "val",
    batch_size: Annotated[int, Opt(help="Images per batch.")] = 64,
) -> None:
    """Fit temperature scaling on validation images and store it in the bundle (training does this itself)."""
    result = api.calibrate(model, data, split=split, batch_size=batch_size)
    table = Table(title=f"temperature T = {result.temperature:.4f} on {result.images:,} {split} images",
                  title_justify="left")
    for name in ("", "before", "after"):
        table.add_column(name, justify="right" if name else "left")
    table.add_row("negative log-likelihood", f"{result.nll_before:.4f}", f"{result.nll_after:.4f}")
    table.add_row("expected calibration error", f"{result.ece_before:.4f}", f"{result.ece_after:.4f}")
    console.print(table)


@app.command(epilog="Examples: imgclf tune photos/ --trials 20 --out runs/tune-shop  |  "
                    "imgclf tune photos/ --time-budget 30m --model fastnet --space space.yaml  |  "
                    "imgclf tune photos/ --trials 40 --storage journal:study.log --study-name shop (run it in several shells)")
@with_config_options
def tune(
    data: Annotated[str, typer.Argument(help=_config_help("data"), show_default=False)],
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
    model_args: Annotated[Optional[list[str]], Opt("--model-arg", help=_config_help("model_args"),
                                                   rich_help_panel="Model")] = None,
    archive: ArchiveOption = None,
    **config_values: object,
) -> None:
    """Search hyperparameters with Optuna: every trial a training run, pruned when hopeless; resumable, shareable."""
    from imgclf.config import read_yaml

    from_file = read_yaml(config) if config else {}
    if from_file.get("time_budget"):
        raise ImgclfError(f"--config {config}: time_budget would be each trial's; tune's --time-budget is the "
                          "search's, so fix --epochs instead")
    # DATA and --out are tune's own (a best.yaml names its data and no out); unset keys fix nothing
    options = {**{name: value for name, value in from_file.items()
                  if value is not None and name not in ("data", "out", "time_budget")},
               **{name: value for name, value in config_values.items() if value is not None}}
    if model_args:
        options["model_args"] = _parse_model_args(model_args)
    result = api.tune(data, out=out, trials=trials, time_budget=time_budget, storage=storage, study_name=study_name,
                      space=space, startup_trials=startup_trials, archive=archive, **options)
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
    if result.interrupted:
        console.print(f"[yellow]interrupted; rerun the same command to resume the study in {result.storage}[/]")
        raise typer.Exit(130)


@app.command(epilog="Examples: imgclf ensemble runs/a runs/b runs/c --out runs/abc  |  "
                    "imgclf ensemble runs/a runs/b --out runs/ab --weights equal")
def ensemble(
    runs: Annotated[list[str], typer.Argument(help="Two or more run directories trained on the same classes and split.",
                                              show_default=False)],
    out: Annotated[Path, Opt(help="Folder for the ensemble (a model every command accepts).")],
    weights: Annotated[str, Opt(help="fit (minimise validation NLL) or equal.")] = "fit",
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out.")] = False,
    batch_size: Annotated[int, Opt(help="Images per batch.")] = 64,
) -> None:
    """Soft-voting ensemble of trained runs, weights fitted on validation; shows the gain over each member."""
    result = api.ensemble(runs, out, weights=weights, overwrite=overwrite, batch_size=batch_size)
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
    held_out = splits[-1] if "test" in splits else "val"
    best = max((scores[held_out]["accuracy"], name) for name, scores in result.scores.items() if name != "ensemble")
    gain = result.scores["ensemble"][held_out]["accuracy"] - best[0]
    console.print(f"{held_out}: ensemble {gain * 100:+.2f} points over the best member ({best[1]}); "
                  f"report: {result.out / 'report.html'}")


@app.command(epilog="Examples: imgclf explain runs/shop cat.jpg  |  imgclf explain runs/shop photos/odd/ --out why --top-k 2")
def explain(
    model: Model,
    images: Annotated[list[str], typer.Argument(help="Image files, folders, globs or @list.txt.", show_default=False)],
    out: Annotated[Path, Opt(help="Folder for the <image>.gradcam.png overlays.")] = Path("explanations"),
    top_k: Annotated[int, Opt(help="Classes to draw a heat map for, best first.")] = 3,
) -> None:
    """Grad-CAM heat maps: which parts of each image the model's top classes rest on, as overlays."""
    written, skipped = api.explain_files(model, images, out, top_k=top_k)
    table = Table(title=f"{len(written)} explanation(s) in {out}", title_justify="left")
    for name in ("image", "top classes", "file"):
        table.add_column(name)
    for path, explanation in written[:20]:
        table.add_row(path.name.removesuffix(".gradcam.png"),
                      ", ".join(f"{name} {probability:.0%}" for name, probability in explanation.top), str(path))
    console.print(table)
    for path, reason in skipped:
        console.print(f"[yellow]skipped {escape(path)}: {escape(reason)}[/]")


# ---------------------------------------------------------------- deploy: export and serve
@app.command(epilog="Examples: imgclf export runs/shop  |  imgclf export runs/shop --format torchscript  |  "
                    "imgclf export runs/shop --quantize int8  |  imgclf export runs/keras-shop --format tflite")
def export(
    model: Model,
    output_format: Annotated[str, Opt("--format", help="onnx, torchscript or openvino (pip install 'imgclf[openvino]'); "
                                                                 "savedmodel, tflite or onnx for a Keras model.")] = "onnx",
    out: Annotated[Optional[Path], Opt(help="Folder for the file (default: the bundle, where --runtime onnx finds it).")] = None,
    quantize: Annotated[Optional[str], Opt(help="int8: also write model.int8.onnx (or .tflite, or the folder "
                                                "model.int8.openvino), statically quantised.")] = None,
    data: Annotated[Optional[str], Opt(help="Labelled images to calibrate and check --quantize on (default: the run's "
                                            "split.csv).")] = None,
    tolerance: Annotated[float, Opt(help="Largest allowed probability difference from the original.")] = 1e-4,
    max_accuracy_drop: Annotated[float, Opt(help="Refuse an int8 model that loses more validation accuracy.")] = 0.02,
) -> None:
    """Export a model (ONNX, TorchScript, OpenVINO; SavedModel, TFLite for Keras), check it gives the same answers, time it."""
    result = api.export(model, output_format, out=out, quantize=quantize, data=data, tolerance=tolerance,
                        max_accuracy_drop=max_accuracy_drop)
    parity = result.parity
    table = Table(title=f"{result.path} ({result.bytes / 1e6:.1f} MB)", title_justify="left")
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("parity images", f"{parity.images} ({parity.source})")
    table.add_row("max |probability difference|", f"{parity.max_abs_diff:.2e} (tolerance {tolerance:.0e})")
    table.add_row("top-1 agreement", f"{parity.top1_agreement:.1%}")
    table.add_row("dynamic batch checked at", ", ".join(str(size) for size in parity.batch_sizes))
    for name, speeds in result.speed.items():
        if isinstance(speeds, dict):
            label = f"{name} ({result.speed['torch_precision']})" if name == "torch" else f"{name} runtime"
            table.add_row(f"{label} img/s", ", ".join(f"{rate:,.0f} at batch {batch}" for batch, rate in speeds.items()))
    quantized = result.quantization
    if quantized is not None:
        table.add_section()
        table.add_row("int8 file", f"{quantized.path} ({quantized.int8_bytes / 1e6:.1f} MB)")
        table.add_row("accuracy fp32 -> int8", f"{quantized.fp32_accuracy:.2%} -> {quantized.int8_accuracy:.2%} "
                                               f"({quantized.accuracy_change * 100:+.2f} points, {quantized.source})")
        table.add_row("int8 top-1 agreement", f"{quantized.top1_agreement:.1%}")
        table.add_row("int8 speed-up", ", ".join(f"{rate:.2f}x at batch {batch}" for batch, rate in quantized.speedup.items()))
    console.print(table)
    for path, error in quantized.skipped if quantized is not None else []:
        console.print(f"[yellow]skipped {path}: {error}[/]")
    console.print(f"metadata (preprocessing, classes, parity, speed): {result.metadata}")


@app.command(epilog="Examples: imgclf serve runs/shop  |  imgclf serve runs/shop --port 9000 --runtime onnx  |  "
                    "curl -F file=@cat.jpg http://127.0.0.1:8000/v1/predict  |  "
                    "imgclf serve --catalog catalog.csv --queries new.csv --accepted accepted.csv")
def serve(
    model: Annotated[Optional[str], typer.Argument(help="A run directory (runs/NAME) or a model bundle folder; "
                                                        "leave out with --catalog.", show_default=False)] = None,
    host: Annotated[str, Opt(help="Address to bind; loopback by default (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.")] = 8000,
    runtime: RuntimeOption = "auto",
    tta: TtaOption = None,
    max_batch: Annotated[int, Opt(help="Most images per model call (dynamic batching).", rich_help_panel="Batching")] = 32,
    max_wait_ms: Annotated[float, Opt(help="How long a batch waits for more images.", rich_help_panel="Batching")] = 2.0,
    max_queue: Annotated[int, Opt(help="Most images waiting; more get 503 at once.", rich_help_panel="Batching")] = 256,
    max_upload_mb: Annotated[float, Opt(help="Most bytes per request, in MiB.", rich_help_panel="Limits")] = 20.0,
    max_pixels: Annotated[int, Opt(help="Most pixels per image.", rich_help_panel="Limits")] = 50_000_000,
    max_files: Annotated[int, Opt(help="Most images per request.", rich_help_panel="Limits")] = 16,
    timeout: Annotated[float, Opt(help="Seconds a request may take.", rich_help_panel="Limits")] = 30.0,
    catalog: Annotated[Optional[Path], Opt(help="Instead of a model: a catalogue CSV whose suggestions for --queries "
                                                "a person reviews on the page.", rich_help_panel="Review")] = None,
    queries: Annotated[Optional[Path], Opt(help="The new products (image and/or name) to review.",
                                           rich_help_panel="Review")] = None,
    accepted: Annotated[Path, Opt(help="CSV the decisions are written to, in the catalogue's format.",
                                  rich_help_panel="Review")] = Path("accepted.csv"),
    api_key: Annotated[Optional[str], Opt(envvar="IMGCLF_API_KEY", show_default=False, help=(
        "Require this key (Authorization: Bearer KEY or X-API-Key) on /v1/* and /metrics; prefer the "
        "IMGCLF_API_KEY environment variable, which other users cannot see in the process list."))] = None,
) -> None:
    """Serve a model over HTTP (REST API with dynamic batching, limits, metrics, docs, a web page), or a review page."""
    from imgclf.serve.server import serve as run_server
    from imgclf.serve.server import serve_review
    from imgclf.serve.uploads import Limits

    if catalog is not None or model is None:
        if model is not None or catalog is None or queries is None:
            raise ImgclfError("give a model to serve (runs/NAME), or --catalog catalog.csv --queries new.csv "
                              "(no model) for the review page")
        serve_review(catalog, queries, accepted, host=host, port=port)
        return

    limits = Limits(max_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, max_files=max_files,
                    timeout_s=timeout)
    run_server(model, host=host, port=port, runtime=runtime, tta=tta, limits=limits, max_batch=max_batch,
               max_wait_ms=max_wait_ms, max_queue=max_queue, api_key=api_key)


register_embedding_commands(app)


def main() -> None:
    """Console-script entry point: one-line errors unless --debug (or IMGCLF_DEBUG=1).

    It reads IMGCLF_DEBUG on each call, not at import, so that a second run in one
    process (the test suite runs most commands in-process) starts from the same state.
    """
    global _debug
    _debug = os.environ.get("IMGCLF_DEBUG") == "1"
    command = typer.main.get_command(app)
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as their own bytes, as ls does
        stream.reconfigure(errors=PATH_BYTES)  # type: ignore[union-attr]
    try:
        code = command.main(args=sys.argv[1:], prog_name="imgclf", standalone_mode=False)
    except ImgclfError as error:
        if _debug:
            raise
        console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)  # messages may hold [brackets]
        sys.exit(2)
    except OSError as error:  # a full disk is the user's to fix; other OS errors are bugs and keep their traceback
        readable = disk_error(error)
        if readable is None or _debug:
            raise
        console.print(f"[red]error:[/] {escape(str(readable))}", soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        console.print("interrupted")
        sys.exit(130)
    except ClickException as error:  # usage mistakes: click's message, usage line and "Did you mean", exit 2
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
