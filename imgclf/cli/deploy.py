"""The deployment commands: ``export`` a model to other runtimes, ``serve`` it (or a review page) over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from imgclf import api
from imgclf.cli.options import (
    LOG_OPTIONS,
    Model,
    Opt,
    RuntimeOption,
    TtaOption,
    log_options,
    option_group,
    with_options,
)
from imgclf.cli.render.deploy import print_export
from imgclf.errors import ImgclfError


def export(
    model: Model,
    output_format: Annotated[str, Opt("--format", help="onnx, torchscript or openvino (pip install "
                                                       "'imgclf[openvino]'); savedmodel, tflite or onnx for a Keras "
                                                       "model.")] = "onnx",
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
    print_export(result, tolerance)


# The server's dynamic batching and request limits: each group goes to the server as one whole.
BATCHING = option_group(
    max_batch=(Annotated[int, Opt(help="Most images per model call (dynamic batching).", rich_help_panel="Batching")], 32),
    max_wait_ms=(Annotated[float, Opt(help="How long a batch waits for more images.", rich_help_panel="Batching")], 2.0),
    max_queue=(Annotated[int, Opt(help="Most images waiting; more get 503 at once.", rich_help_panel="Batching")], 256),
)
LIMITS = option_group(
    max_upload_mb=(Annotated[float, Opt(help="Most bytes per request, in MiB.", rich_help_panel="Limits")], 20.0),
    max_pixels=(Annotated[int, Opt(help="Most pixels per image.", rich_help_panel="Limits")], 50_000_000),
    max_files=(Annotated[int, Opt(help="Most images per request.", rich_help_panel="Limits")], 16),
    timeout=(Annotated[float, Opt(help="Seconds a request may take.", rich_help_panel="Limits")], 30.0),
)


@with_options(BATCHING, LIMITS, LOG_OPTIONS)
def serve(
    model: Annotated[Optional[str], typer.Argument(help="A run directory (runs/NAME), a model bundle folder or a model "
                                                        "folder (models/NAME: its current version, followed); "
                                                        "leave out with --catalog.", show_default=False)] = None,
    host: Annotated[str, Opt(help="Address to bind; loopback by default (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.")] = 8000,
    runtime: RuntimeOption = "auto",
    tta: TtaOption = None,
    catalog: Annotated[Optional[Path], Opt(help="Instead of a model: a catalogue CSV whose suggestions for --queries "
                                                "a person reviews on the page.", rich_help_panel="Review")] = None,
    queries: Annotated[Optional[Path], Opt(help="The new products (image and/or name) to review.",
                                           rich_help_panel="Review")] = None,
    accepted: Annotated[Path, Opt(help="CSV the decisions are written to, in the catalogue's format.",
                                  rich_help_panel="Review")] = Path("accepted.csv"),
    api_key: Annotated[Optional[str], Opt(envvar="IMGCLF_API_KEY", show_default=False, help=(
        "Require this key (Authorization: Bearer KEY or X-API-Key) on /v1/* and /metrics; prefer the "
        "IMGCLF_API_KEY environment variable, which other users cannot see in the process list."))] = None,
    **options: Any,
) -> None:
    """Serve a model over HTTP (REST API with dynamic batching, limits, metrics, docs, a web page), or a review page."""
    from imgclf.serve.server import serve as run_server
    from imgclf.serve.server import serve_review
    from imgclf.serve.uploads import Limits

    if catalog is not None or model is None:
        if model is not None or catalog is None or queries is None:
            raise ImgclfError("give a model to serve (runs/NAME), or --catalog catalog.csv --queries new.csv "
                              "(no model) for the review page")
        if log_options(options) is not None:
            raise ImgclfError("--log records a model's predictions; the catalogue review page makes none (leave it out)")
        serve_review(catalog, queries, accepted, host=host, port=port)
        return
    limits = Limits(max_bytes=int(options["max_upload_mb"] * 1024 * 1024), max_pixels=options["max_pixels"],
                    max_files=options["max_files"], timeout_s=options["timeout"])
    run_server(model, host=host, port=port, runtime=runtime, tta=tta, limits=limits, api_key=api_key,
               log=log_options(options), **{parameter.name: options[parameter.name] for parameter in BATCHING})


COMMANDS = {
    "export": (export, "Examples: imgclf export runs/shop  |  imgclf export runs/shop --format torchscript  |  "
                       "imgclf export runs/shop --quantize int8  |  imgclf export runs/keras-shop --format tflite"),
    "serve": (serve, "Examples: imgclf serve runs/shop  |  imgclf serve runs/shop --port 9000 --runtime onnx  |  "
                     "curl -F file=@cat.jpg http://127.0.0.1:8000/v1/predict  |  "
                     "imgclf serve runs/shop --log predictions.db --log-images logged/  |  "
                     "imgclf serve models/shop  |  "
                     "imgclf serve --catalog catalog.csv --queries new.csv --accepted accepted.csv"),
}
