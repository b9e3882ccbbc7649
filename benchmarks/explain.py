"""Grad-CAM time per image at 224 px (EfficientNet-Lite0 bundle) and the picture in docs/guides/explanations.md.

Usage: python benchmarks/explain.py RUN [--data ../shared/datasets/flowers] [--images 20]

RUN is a tf_efficientnet_lite0 run on flowers (e.g. the one benchmarks/calibration.py
leaves in runs/benchmarks/calibration-flowers-lite0-3m). The first image is
not timed (it builds the model and finds the layer); the rest are, one at a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import imgclf
from imgclf.deploy.explain import save_explanation

RESULTS = Path(__file__).parent / "results" / "explain.json"
PICTURE = Path(__file__).parents[1] / "docs" / "explain.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/flowers")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    classifier = imgclf.load(args.run, tta=False)
    paths = sorted((args.data / "val").rglob("*.jpg"))[::37][:args.images + 1]
    started = time.perf_counter()
    first = classifier.explain(paths[0], top_k=2)
    setup = time.perf_counter() - started
    seconds = []
    for path in paths[1:]:
        started = time.perf_counter()
        classifier.explain(path, top_k=1)
        seconds.append(time.perf_counter() - started)
    save_explanation(first, PICTURE, title=f"{paths[0].parent.name}/{paths[0].name}")
    record = {"model": classifier.info.architecture, "image_size": classifier.info.image_size, "layer": first.layer,
              "images": len(seconds), "first_image_seconds": round(setup, 3),
              "seconds_per_image": round(sum(seconds) / len(seconds), 3), "fastest": round(min(seconds), 3)}
    print(json.dumps(record))
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
