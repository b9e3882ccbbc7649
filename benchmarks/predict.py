"""Prediction throughput from JPEG files: ``Classifier.predict_files`` against a naive loop, in one process.

Usage: python benchmarks/predict.py [--datasets ../shared/datasets] [--runs runs/benchmarks]
                                    [--limit N] [--results PATH]

Uses the bundles the training benchmarks leave behind:
``cifar10-fastnet-15s`` (32 px, run ``benchmarks/cifar10.py`` first) on the
10,000 CIFAR-10 test images and ``flowers-default`` (lite0 at 224 px,
``benchmarks/flowers.py``) on the 736 flowers val images. The naive
baseline is what a tutorial writes: for each file, PIL open, convert, resize,
normalise, one model call on a batch of one, softmax (a freshly loaded
model in PyTorch's default layout and fp32, eval mode, no gradients); it is
timed on the first ``--naive-images`` files after one warm-up call. Both produce
the same top-1 class on those files (checked).

The bundle is first exported to ONNX and OpenVINO (each with int8, when its
accuracy check passes; OpenVINO when installed), so ``imgclf`` above is
``--runtime auto`` choosing among all of them, int8 included, as a user's
predict does once the exports exist (``runtime`` names its choice). Then
every runtime, in the same run: ``predict_files`` on the same files with
torch, onnx, onnx-int8, openvino and openvino-int8 at batch 1 and 64:
images/s and top-1 accuracy against the folder labels (class folders); and
each runtime's model-only throughput (``model_only_images_per_second``:
random uint8 pixels already at the input size, batch 64, no file reading,
no decode, no resize), the ceiling the forward pass alone sets.
``model_only_ceiling_speedup`` is the best runtime's model-only figure over
the naive loop: the speed-up no decoder could lift predict above.
``model_share_of_predict_time`` is auto's runtime's model-only time per
image over predict's (the rest is reading, decoding and resizing, which
overlap the model in other processes, so it is a share of wall time, not of
work). The CPU model is recorded with the figures. ``--limit`` takes the
first N files (a quick check that the script works; its figures mean
nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from imgclf.data.sources import IMAGE_EXTENSIONS
from imgclf.deploy.classifier import Classifier
from imgclf.deploy.export import export
from imgclf.deploy.runtime import compare_speeds
from imgclf.deploy.runtime_choice import cpu_model
from imgclf.errors import ImgclfError

RESULTS = Path(__file__).parent / "results" / "predict.json"
RUNTIMES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
BATCHES = (1, 64)
MODEL_ONLY_BATCH = 64
CASES = [  # (name, bundle run, image folder, goal as a multiple of the naive loop)
    ("cifar10-32px-fastnet", "cifar10-fastnet-15s", "cifar10/test", 10.0),
    ("flowers-224px-lite0", "flowers-default", "flowers/val", 3.0),
]


def plain_model(classifier: Classifier, run: Path) -> torch.nn.Module:
    """The bundle's network as a user's script builds it: no BatchNorm folding, fp32, NCHW."""
    from safetensors.torch import load_file

    from imgclf.deploy.bundle import WEIGHTS_FILE, find_bundle
    from imgclf.models import create_model

    info = classifier.info
    model = create_model(info.architecture, len(info.classes), in_chans=info.channels, image_size=info.image_size,
                         **info.model_args)
    model.load_state_dict(load_file(str(find_bundle(run) / WEIGHTS_FILE)))
    return model.eval()


def naive_predict(classifier: Classifier, run: Path, paths: list[Path]) -> tuple[float, list[str]]:
    """(images/s, top-1 classes) of the one-image-at-a-time loop."""
    info = classifier.info
    model = plain_model(classifier, run)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    predictions = []
    with torch.no_grad():
        model(torch.zeros(1, info.channels, info.image_size, info.image_size))  # warm: first-call allocations
        started = time.perf_counter()
        for path in paths:
            image = Image.open(path).convert("RGB")
            side = (info.image_size, info.image_size)  # the bundle's resize policy, as a script would write it
            image = (ImageOps.fit(image, side, Image.BILINEAR) if info.resize == "crop"
                     else image.resize(side, Image.BILINEAR))
            tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            probabilities = torch.softmax(model((tensor - mean) / std), dim=1)
            predictions.append(classifier.classes[int(probabilities.argmax())])
    return len(paths) / (time.perf_counter() - started), predictions


def fast_predict(classifier: Classifier, paths: list[Path], batch_size: int = 256) -> tuple[float, list[str]]:
    started = time.perf_counter()
    rows = list(classifier.predict_files(paths, top_k=1, batch_size=batch_size))
    seconds = time.perf_counter() - started
    return len(paths) / seconds, [row.prediction for row in rows]


def exports(bundle: Path) -> dict[str, str]:
    """Export ONNX and OpenVINO (each with int8) into the bundle; what could not be made, and why."""
    missing = {}
    for format in ("onnx", "openvino"):
        try:
            export(bundle, format, quantize="int8")
        except ImgclfError as error:  # int8 refused for accuracy (the fp32 file is kept), or OpenVINO not installed
            missing[format] = str(error).splitlines()[0]
    return missing


def runtime_table(bundle: Path, paths: list[Path]) -> tuple[dict[str, dict[str, object]], dict[str, float]]:
    """Images/s and top-1 accuracy (folder labels) of every runtime at each batch size, on the same files,
    with each runtime's model-only images/s at batch 64; and those model-only figures by runtime."""
    truth = [path.parent.name for path in paths]
    table: dict[str, dict[str, object]] = {}
    loaded = {}
    for runtime in RUNTIMES:
        try:
            loaded[runtime] = Classifier.load(bundle, tta=False, runtime=runtime)
        except ImgclfError as error:
            table[runtime] = {"skipped": str(error).splitlines()[0]}
    for runtime, classifier in loaded.items():
        rows: dict[str, object] = {}
        for batch in BATCHES:
            rate, classes = fast_predict(classifier, paths, batch)
            rows[str(batch)] = {"images_per_second": round(rate, 1),
                                "accuracy": round(float(np.mean([a == b for a, b in zip(classes, truth)])), 4)}
        table[runtime] = rows
        print(f"  {runtime}: {json.dumps(rows)}", flush=True)
    rates = model_only(loaded)
    for runtime, rate in rates.items():
        table[runtime]["model_only_images_per_second"] = rate
        print(f"  {runtime}: model only {rate} images/s", flush=True)
    return table, rates


def model_only(classifiers: dict[str, Classifier]) -> dict[str, float]:
    """Each runtime's forward pass alone on random uint8 pixels at the input size, batch 64 (interleaved rounds)."""
    if not classifiers:
        return {}
    info = next(iter(classifiers.values())).info
    speeds = compare_speeds({name: classifier.runtime for name, classifier in classifiers.items()}, info,
                            batches=(MODEL_ONLY_BATCH,), rounds=3, seconds=1.0)
    return {name: speed[str(MODEL_ONLY_BATCH)] for name, speed in speeds.items()}


def ceilings(rates: dict[str, float], ours: float, naive: float, chosen: str) -> dict[str, object]:
    """The best model-only runtime, its speed-up over the naive loop, and the model's share of auto's predict time."""
    if not rates:
        return {}
    best = max(rates, key=rates.__getitem__)
    return {"model_only_best": {"runtime": best, "images_per_second": rates[best]},
            "model_only_ceiling_speedup": round(rates[best] / naive, 2),
            "model_share_of_predict_time": round(ours / rates[chosen], 3) if chosen in rates else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--naive-images", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N files (to check the script).")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {}
    for name, run, folder, goal in CASES:
        if not (args.runs / run / "model" / "model.json").is_file():
            print(f"skipping {name}: no bundle at {args.runs / run} (run the training benchmark first)")
            continue
        paths = sorted(path for path in (args.datasets / folder).rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
        paths = paths[:args.limit]
        bundle = args.runs / run / "model"
        missing = exports(bundle)  # first: --runtime auto then weighs every export, int8 included
        fast = Classifier.load(args.runs / run, tta=False)
        fast_predict(fast, paths[:256])  # warm: every arm reads files from the page cache and runs warm kernels
        for path in paths:
            path.read_bytes()
        ours, our_classes = fast_predict(fast, paths)
        naive, naive_classes = naive_predict(Classifier.load(args.runs / run, tta=False), args.runs / run,
                                             paths[:args.naive_images])
        agreement = float(np.mean([a == b for a, b in zip(naive_classes, our_classes)]))
        chosen = fast.runtime.name
        results[name] = {"images": len(paths), "imgclf_images_per_second": round(ours, 1),
                         "naive_images_per_second": round(naive, 1), "speedup": round(ours / naive, 2),
                         "goal_speedup": goal, "top1_agreement_with_naive": round(agreement, 4),
                         "runtime": chosen, "precision": "int8" if chosen.endswith("int8")
                         else getattr(fast.runtime, "precision", "fp32")}
        print(name, json.dumps(results[name]), flush=True)
        results[name]["exports_missing"] = missing
        table, rates = runtime_table(bundle, paths)
        results[name].update(ceilings(rates, ours, naive, chosen), runtimes=table)
        print(name, json.dumps({key: results[name].get(key) for key in ("model_only_best", "model_only_ceiling_speedup",
                                                                        "model_share_of_predict_time")}), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "limit": args.limit,
                                        "cases": results}, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
