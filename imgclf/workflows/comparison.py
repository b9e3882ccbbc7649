"""``compare``: one network, one recipe, one seed and one data split, trained on each backend, side by side.

This is the seed article's experiment (the same small CNN in TensorFlow and
in PyTorch) as one command. Each backend trains a normal run into
``OUT/<backend>/`` through :func:`imgclf.training.train`, so the runs are
ordinary runs (``predict``, ``evaluate`` and ``report`` work on them). Both
use fp32: torch's bf16 autocast would make it a comparison of number formats.

Written to ``OUT``: ``comparison.png`` (per-epoch loss and accuracy of both
on one chart), ``comparison.html`` (that chart, final metrics side by side,
seconds per epoch, parameter counts, inference images/s) and
``comparison.json`` (the same figures).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import BACKENDS, make_config
from imgclf.console import HEADING
from imgclf.engines.registry import get_backend
from imgclf.errors import ImgclfError
from imgclf.files import write_text_atomic
from imgclf.runs import RunDirectory, held_out_items, slug

log = logging.getLogger(__name__)


INFERENCE_IMAGES = 1024  # held-out images timed for inference speed
INFERENCE_BATCH = 64


@dataclass
class BackendResult:
    """One backend's run and the figures compared."""

    backend: str
    run_dir: str
    parameters: int
    seconds_per_epoch: float
    train_images_per_second: float
    inference_images_per_second: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(repr=False)


@dataclass
class Comparison:
    out: Path
    results: list[BackendResult]
    parameters_match: bool
    same_split: bool

    @property
    def html(self) -> Path:
        return self.out / "comparison.html"

    @property
    def chart(self) -> Path:
        return self.out / "comparison.png"


def parse_backends(text: str) -> list[str]:
    """``torch,tensorflow`` -> the list, checked: known names, no repeats, TensorFlow installed if named."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise ImgclfError(f"--backends '{text}': give a comma-separated list of {', '.join(BACKENDS)}")
    if len(set(names)) != len(names):
        raise ImgclfError(f"--backends '{text}' names a backend twice")
    for name in names:
        get_backend(name).require()
    return names


def compare(data: str | Path, *, backends: list[str], model: str = "tutorial-cnn", epochs: float = 10,
            out: str | Path | None = None, overwrite: bool = False, archive: str | Path | None = None,
            **options: Any) -> Comparison:
    """Train ``model`` on each of ``backends`` with the same settings and write the comparison report."""
    from imgclf.evaluation.plots import plot_backend_comparison
    from imgclf.training import train

    out = Path(out) if out is not None else Path(f"compare-{slug(str(data), 'data')}")
    if out.exists() and not out.is_dir():
        raise ImgclfError(f"--out {out} is a file; give a folder for the comparison")
    results = []
    for backend in backends:
        log.info(backend, extra=HEADING)
        config = make_config(data=str(data), model=model, epochs=epochs, backend=backend, precision="fp32",
                             out=str(out / backend), **options)
        run = train(config, archive=archive, overwrite=overwrite)
        if run.interrupted:
            raise ImgclfError(f"the {backend} run was interrupted; continue it with imgclf train --resume "
                              f"{run.run_dir}, or run compare again")
        results.append(_result(backend, run.run_dir, run.history, run.metrics))
    splits = {RunDirectory(Path(result.run_dir)).split_file.read_bytes() for result in results}
    comparison = Comparison(out, results, parameters_match=len({result.parameters for result in results}) == 1,
                            same_split=len(splits) == 1)
    plot_backend_comparison({result.backend: result.history for result in results}, comparison.chart)
    write_text_atomic(out / "comparison.json", json.dumps(
        {"parameters_match": comparison.parameters_match, "same_split": comparison.same_split,
         "results": [asdict(result) for result in results]}, indent=2))
    write_text_atomic(comparison.html, _page(comparison, model, data))
    return comparison


def _result(backend: str, run_dir: Path, history: list[dict[str, Any]], metrics: dict[str, Any]) -> BackendResult:
    seconds = [row["seconds"] for row in history]
    images = sum(row["seconds"] * row["images_per_second"] for row in history)
    return BackendResult(backend=backend, run_dir=str(run_dir), parameters=int(metrics["parameters"]),
                         seconds_per_epoch=round(float(np.mean(seconds)), 3),
                         train_images_per_second=round(images / max(sum(seconds), 1e-9), 1),
                         inference_images_per_second=inference_speed(run_dir), metrics=metrics, history=history)


def inference_speed(run_dir: Path) -> float:
    """Images/s of the bundle's forward pass (batches of 64, fp32) on up to 1,024 decoded held-out images."""
    from imgclf.data.cache import build_cache
    from imgclf.deploy.classifier import Classifier

    classifier = Classifier.load(run_dir, precision="fp32", allow_int8=False)
    items = held_out_items(RunDirectory(run_dir).read_split())
    info = classifier.info
    cache = build_cache([item.path for item in items[:INFERENCE_IMAGES]], size=(info.image_size, info.image_size),
                        policy=info.resize, grayscale=info.channels == 1,
                        description="Decoding held-out images")
    assert cache.pixels is not None  # decoded at a size: the pixels are kept
    pixels = cache.pixels[cache.ok]
    batches = [pixels[start:start + INFERENCE_BATCH] for start in range(0, len(pixels), INFERENCE_BATCH)]
    if not batches:
        return 0.0
    classifier.predict_pixels(batches[0])  # warm-up: graph tracing, allocations
    started = time.perf_counter()
    for batch in batches:
        classifier.predict_pixels(batch)
    return round(len(pixels) / max(time.perf_counter() - started, 1e-9), 1)


def _page(comparison: Comparison, model: str, data: str | Path) -> str:
    import html

    from imgclf.evaluation.pages import image, page, section, table

    results = comparison.results
    header = ["", *(result.backend for result in results)]

    def row(label: str, values: list[Any]) -> list[Any]:
        return [label, *values]

    def metric(name: str, percent: bool = False) -> list[Any]:
        values = [result.metrics.get(name) for result in results]
        return [f"{value:.2%}" if percent and value is not None else value for value in values]

    rows = [
        row("test accuracy", metric("test_accuracy", percent=True)),
        row("test loss", metric("test_loss")),
        row("validation accuracy (shipped epoch)", metric("val_accuracy", percent=True)),
        row("best epoch / epochs", [f"{r.metrics['best_epoch']} / {r.metrics['epochs_trained']}" for r in results]),
        row("seconds per epoch (training)", [f"{r.seconds_per_epoch:.2f}" for r in results]),
        row("training images/s", [f"{r.train_images_per_second:,.0f}" for r in results]),
        row("inference images/s (batch 64)", [f"{r.inference_images_per_second:,.0f}" for r in results]),
        row("parameters", [f"{r.parameters:,}" for r in results]),
    ]
    checks = (f"<p>Parameter counts {'match' if comparison.parameters_match else '<b>differ</b>'}; "
              f"the data split is {'the same' if comparison.same_split else '<b>not the same</b>'} on every backend. "
              "Both train in fp32 with the same recipe and seed; runs: "
              + ", ".join(html.escape(r.run_dir) for r in results) + ".</p>")
    epochs = []
    for result in results:
        for entry in result.history:
            epochs.append([result.backend, entry["epoch"], entry["train_loss"], entry["train_accuracy"],
                           entry["val_loss"], entry["val_accuracy"], entry["seconds"]])
    body = (f"<h1>{html.escape(model)}: {' vs '.join(r.backend for r in results)}</h1>"
            f"<p class=\"muted\">{html.escape(str(data))}</p>"
            + section("metrics", "Final metrics", table(header, rows) + checks)
            + section("curves", "Loss and accuracy per epoch", image(comparison.chart, "training curves"))
            + section("epochs", "Every epoch", table(["backend", "epoch", "train loss", "train accuracy",
                                                          "val loss", "val accuracy", "seconds"], epochs)))
    return page(f"imgclf compare: {model}", body)
