"""The commands that use a trained model on new images: ``predict`` and ``explain``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from imgclf import api
from imgclf.cli.options import (
    LOG_OPTIONS,
    DeviceOption,
    Model,
    NprocOption,
    Opt,
    RuntimeOption,
    TtaOption,
    log_options,
    start_processes,
    with_options,
)
from imgclf.cli.render import TABLE_LIMIT
from imgclf.cli.render.predict import (
    print_explanations,
    print_parts_summary,
    print_prediction_tables,
    stream_predictions,
)
from imgclf.errors import ImgclfError

SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


@with_options(LOG_OPTIONS)
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
    **options: Any,
) -> None:
    """Classify images: a probability table for a few, CSV/JSON/JSONL streamed for many."""
    from imgclf.deploy.bundle import find_bundle, read_bundle_info
    from imgclf.deploy.writers import open_writer

    if output_format is None and out is not None:
        output_format = SUFFIX_FORMATS.get(out.suffix.lower())
        if output_format is None:
            raise ImgclfError(f"--out {out}: cannot tell the format from the suffix; add --format csv, json or jsonl")
    log = log_options(options)
    if log is not None and nproc is not None:
        raise ImgclfError("--log records predictions from one process; leave out --nproc")
    start_processes(nproc, device, lambda: _check_distributed_predict(model, inputs, output_format))
    from imgclf.deploy.predict import expand_inputs
    from imgclf.distributed import current_world

    shared: dict[str, Any] = dict(top_k=top_k, min_confidence=min_confidence, tta=tta, batch_size=batch_size,
                                  device=device, runtime=runtime)
    if current_world().is_distributed:  # a rank of a torchrun job
        if log is not None:
            raise ImgclfError("--log records predictions from one process; run predict without torchrun")
        _check_distributed_predict(model, inputs, output_format)
        summary = api.predict_in_parts(model, inputs, output_format, out, **shared)  # type: ignore[arg-type]  # _check_distributed_predict refused a missing format
        if summary is not None:
            print_parts_summary(summary)
        return
    paths = expand_inputs(inputs)
    if output_format is None and len(paths) > TABLE_LIMIT:
        raise ImgclfError(f"{len(paths):,} images are too many for tables; add --out preds.csv or --format jsonl")
    rows = api.predict(model, paths, log=log, **shared)
    if output_format is None:
        print_prediction_tables(list(rows))
        return
    info = read_bundle_info(find_bundle(model))
    with open_writer(output_format, out, info.classes, info.multilabel) as write:
        stream_predictions(rows, write, len(paths))


def _check_distributed_predict(model: str, inputs: list[str], output_format: str | None) -> None:
    """What every process of a distributed predict needs: an output to join the parts into, and a torch model."""
    from imgclf.deploy.writers import FORMATS

    if output_format is None:
        raise ImgclfError("a predict split among processes writes one file: add --out preds.csv (or .json, .jsonl) "
                          "or --format csv|json|jsonl")
    if output_format not in FORMATS:
        raise ImgclfError(f"--format '{output_format}' is not one of {', '.join(FORMATS)}")
    api.check_distributable(model, list(inputs))


def explain(
    model: Model,
    images: Annotated[list[str], typer.Argument(help="Image files, folders, globs or @list.txt.", show_default=False)],
    out: Annotated[Path, Opt(help="Folder for the <image>.gradcam.png overlays.")] = Path("explanations"),
    top_k: Annotated[int, Opt(help="Classes to draw a heat map for, best first.")] = 3,
) -> None:
    """Grad-CAM heat maps: which parts of each image the model's top classes rest on, as overlays."""
    written, skipped = api.explain_files(model, images, out, top_k=top_k)
    print_explanations(written, skipped, out)


COMMANDS = {
    "predict": (predict, "Examples: imgclf predict runs/shop cat.jpg  |  imgclf predict runs/shop photos/ --out "
                         "preds.csv  |  find . -name '*.jpg' | imgclf predict runs/shop - --format jsonl  |  "
                         "imgclf predict runs/shop photos/ --out preds.csv --nproc 2  |  imgclf predict runs/shop photos/ --out "
                         "preds.csv --log predictions.db"),
    "explain": (explain, "Examples: imgclf explain runs/shop cat.jpg  |  imgclf explain runs/shop photos/odd/ "
                         "--out why --top-k 2"),
}
