"""Shared by the training benchmarks: run ``imgclf.train`` for a named case and record the figures.

Not a benchmark itself. Each record holds the accuracy on the held-out
split, the training seconds (the epochs' training loops, excluding the
per-epoch validation), the wall seconds of the whole call (decoding,
evaluation and writing included), images/s, and the sustained FLOP/s of
training: the FLOPs of one training step per image (see
:func:`training_flops_per_image`) times the images seen, over the training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import imgclf
from imgclf.deploy.runtime_choice import cpu_model
from imgclf.models import create_model

RUNS = Path(os.environ.get("IMGCLF_BENCH_RUNS", "runs/benchmarks"))


def training_flops_per_image(model: str, model_args: dict, image_size: int, classes: int, head_only: bool) -> float:
    """FLOPs of one training step per image: 3x the counted forward pass (1x for a frozen-backbone probe).

    The backward pass is estimated as twice the forward, the usual rule:
    torch's counter overcounts the backward of grouped (depthwise) convolutions
    by an order of magnitude, which would flatter EfficientNet's figures.
    """
    network = create_model(model, classes, image_size=image_size, **model_args).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.randn(2, 3, image_size, image_size))
    return counter.get_total_flops() / 2 * (1 if head_only else 3)


def case_arguments(description: str, data: str, cases: list[str]) -> argparse.Namespace:
    """The benchmarks' shared command line: ``--data`` (default ``data``) and ``--cases`` (comma-separated, default all)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(data))
    parser.add_argument("--cases", default=",".join(cases))
    return parser.parse_args()


def run_case(name: str, data: str | Path, **options: Any) -> dict[str, Any]:
    print(f"\n=== {name}: {options}", flush=True)
    started = time.perf_counter()
    result = imgclf.train(data, out=RUNS / name, overwrite=True, **options)
    wall = time.perf_counter() - started
    config = result.config
    train_seconds = sum(row["seconds"] for row in result.history)
    images_seen = sum(row["seconds"] * row["images_per_second"] for row in result.history)
    flops = 0.0
    for row in result.history:
        per_image = training_flops_per_image(config.model, config.model_args, config.image_size,
                                             len(imgclf.load(result.run_dir).classes), row["stage"] == "probe")
        flops += per_image * row["seconds"] * row["images_per_second"]
    record = {
        "model": config.model, "model_args": config.model_args, "strategy": config.strategy,
        "image_size": config.image_size, "batch_size": config.batch_size, "epochs": config.epochs,
        "precision": options.get("precision", "auto"), "time_budget": config.time_budget,
        "train_seconds": round(train_seconds, 1), "wall_seconds": round(wall, 1),
        "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1),
        "sustained_gflops": round(flops / max(train_seconds, 1e-9) / 1e9, 1),
        "per_epoch": [{key: row[key] for key in ("epoch", "stage", "val_accuracy", "seconds")} for row in result.history],
        **{key: value for key, value in result.metrics.items() if key.endswith(("accuracy", "loss", "images"))},
    }
    print(json.dumps({key: value for key, value in record.items() if key != "per_epoch"}), flush=True)
    return record


def save(path: Path, records: dict[str, dict[str, Any]]) -> None:
    """Merge ``records`` into the JSON at ``path`` (cases run separately keep their earlier figures)."""
    existing = json.loads(path.read_text()) if path.exists() else {}
    cases = {**existing.get("cases", {}), **records}
    machine = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__,
               "processor": platform.processor() or platform.machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "cases": cases}, indent=2) + "\n")
    print(f"wrote {path}")
