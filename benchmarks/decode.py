"""JPEG decoding for a model's input: the full-size decode against the scaled (DCT draft) decode imgclf uses.

Usage: python benchmarks/decode.py [--datasets ../shared/datasets] [--runs runs/benchmarks]
                                   [--large 60] [--limit N] [--results PATH]

Two sets: the flowers val photos (at most 320 px, as stored) and large photos
made from the first ``--large`` of them by upscaling to 12 megapixels (4000x3000,
JPEG quality 90, written to a temporary folder). For each set and input size
(224 and 32 px), one process decodes every file with ``decode_file(...,
draft=False)`` (every pixel, then resized) and with the default scaled decode:
images/s of each, and the pixel difference between them (mean and 99th
percentile of |difference|, 0..255). With the flowers bundle
(``flowers-default``, the default photo plan (lite0 at 224 px) from ``benchmarks/flowers.py``) the accuracy of each
decode on the same files, at the model's own size, is the measured effect on
what matters.

``plain_jpeg``: the same decode (scaled, at the model's size) through Pillow
alone and through :mod:`imgclf.data.plain_jpeg`'s direct libjpeg-turbo path
(imgclf's default), on the first ``--cifar`` CIFAR-10 test JPEGs at 32 px, the
flowers val photos and the large photos at 224: images/s of each in this one
process, and how many images' pixels differ (the path is exact: 0 expected).
Writes ``benchmarks/results/decode.json`` with the CPU model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data import plain_jpeg
from imgclf.data.decode import decode_file
from imgclf.data.sources import IMAGE_EXTENSIONS
from imgclf.deploy.classifier import Classifier
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "decode.json"
SIZES = (224, 32)
LARGE = (4000, 3000)  # 12 megapixels
BUNDLE = "flowers-default"


def make_large(paths: list[Path], folder: Path) -> list[Path]:
    """Each photo upscaled to 12 megapixels as a JPEG, in its class folder (the label stays readable)."""
    made = []
    for path in paths:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize(LARGE, Image.Resampling.BICUBIC).save(target, "JPEG", quality=90)
        made.append(target)
    return made


def decode_all(paths: list[Path], size: int, draft: bool, policy: str = "squash") -> tuple[float, np.ndarray]:
    """(images/s, pixels) of decoding ``paths`` in this one process."""
    started = time.perf_counter()
    pixels = np.stack([decode_file(path, (size, size), policy, draft=draft).pixels for path in paths])  # type: ignore[arg-type]
    return len(paths) / (time.perf_counter() - started), pixels


def compare(paths: list[Path], size: int, classifier: Classifier | None) -> dict[str, object]:
    full_rate, full = decode_all(paths, size, draft=False, policy=classifier.info.resize if classifier else "squash")
    scaled_rate, scaled = decode_all(paths, size, draft=True, policy=classifier.info.resize if classifier else "squash")
    difference = np.abs(full.astype(np.int16) - scaled.astype(np.int16))
    row: dict[str, object] = {
        "images": len(paths), "size": size, "full_images_per_second": round(full_rate, 1),
        "scaled_images_per_second": round(scaled_rate, 1), "speedup": round(scaled_rate / full_rate, 2),
        "mean_abs_diff": round(float(difference.mean()), 3), "p99_abs_diff": float(np.percentile(difference, 99)),
        "images_changed": int(np.count_nonzero(difference.reshape(len(paths), -1).max(axis=1)))}
    if classifier is not None and size == classifier.info.image_size:
        truth = np.array([classifier.classes.index(path.parent.name) for path in paths])
        for name, pixels in (("full", full), ("scaled", scaled)):
            chosen = classifier.decide(classifier.predict_pixels(pixels))
            row[f"{name}_accuracy"] = round(float(np.mean(chosen == truth)), 4)
    print(json.dumps(row), flush=True)
    return row


@contextlib.contextmanager
def pillow_only() -> Iterator[None]:
    """Every file through Pillow, as when simplejpeg is not installed."""
    saved = plain_jpeg._simplejpeg
    plain_jpeg._simplejpeg = lambda: None
    try:
        yield
    finally:
        plain_jpeg._simplejpeg = saved


def compare_paths(name: str, paths: list[Path], size: int) -> dict[str, object]:
    """Pillow alone against the direct path (the default), same files, same scaled decode."""
    decode_all(paths[:50], size, draft=True)  # warm: the page cache and both decoders' first calls
    with pillow_only():
        decode_all(paths[:50], size, draft=True)
        pillow_rate, pillow = decode_all(paths, size, draft=True)
    direct_rate, direct = decode_all(paths, size, draft=True)
    row: dict[str, object] = {
        "set": name, "images": len(paths), "size": size, "pillow_images_per_second": round(pillow_rate, 1),
        "direct_images_per_second": round(direct_rate, 1), "speedup": round(direct_rate / pillow_rate, 2),
        "images_with_different_pixels": int(np.count_nonzero((pillow != direct).reshape(len(paths), -1).any(axis=1)))}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--large", type=int, default=60, help="How many 12-megapixel photos to make and decode.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N flowers files (to check the script).")
    parser.add_argument("--cifar", type=int, default=5000, help="How many CIFAR-10 test JPEGs the plain_jpeg rows decode.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    paths = sorted(path for path in (args.datasets / "flowers" / "val").rglob("*")
                   if path.suffix.lower() in IMAGE_EXTENSIONS)[:args.limit]
    bundle = args.runs / BUNDLE
    classifier = Classifier.load(bundle, tta=False) if (bundle / "model" / "model.json").is_file() else None
    sizes = sorted({*SIZES, *([classifier.info.image_size] if classifier else [])}, reverse=True)
    results: dict[str, object] = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                                  "model": BUNDLE if classifier else None}
    results["flowers"] = [compare(paths, size, classifier) for size in sizes]
    with tempfile.TemporaryDirectory() as folder:
        large = make_large(paths[::max(1, len(paths) // args.large)][:args.large], Path(folder))
        results["large_12mp"] = [compare(large, size, classifier) for size in sizes]
        cifar = sorted((args.datasets / "cifar10" / "test").rglob("*.jpg"))[:args.cifar]
        results["plain_jpeg"] = [compare_paths("cifar10 test", cifar, 32), compare_paths("flowers val", paths, 224),
                                 compare_paths("large 12 MP", large, 224)]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
