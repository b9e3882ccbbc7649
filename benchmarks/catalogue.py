"""Catalogue categorisation on a semi-synthetic catalogue: honest evaluation, then batch throughput.

Usage: IMGCLF_HOME=/tmp/catalogue-home python benchmarks/catalogue.py [--data ../shared/datasets/flowers]

What is real and what is made up: the PHOTOS are the real flowers photos
(five classes). Everything else is SYNTHETIC, generated with a fixed seed:
the category paths (``Composites/Daisy``, ``Shrubs/Rose``, ``Bulbs/Tulip``
...), the products (one to three photos of the same class each), and the
product names: an invented brand, a variety word for the class (a third of
them share no word with the category: "marguerite", "blowball", "teddy
bear"), a pack size, and spelling noise (letters doubled, dropped or
changed) in a fifth of the names. No public product catalogue with names
ships with this repository.

- ``evaluate``: ``imgclf match --evaluate`` on a 3,000-photo catalogue: whole
  products held out; image-only, name-only, blend and learned accuracy,
  top-3, accuracy on the surest 80%, per level.
- ``batch``: 10,000 new products (the other photos, each used several times
  under different generated names) against the 3,000-photo catalogue with
  ``imgclf match --queries --out``; the photos are embedded first and timed
  apart, so products/s is the matching itself (fitting the learned matcher
  is timed apart too).

Run it under ``flock /tmp/imgclf-bench.lock``; the embeddings are cached in
``$IMGCLF_HOME``, so a rerun costs only the matching.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from training_runs import save

RESULTS = Path(__file__).parent / "results" / "catalogue.json"
CATALOG_PHOTOS = 3000
QUERIES = 10_000
SEED = 0
CATEGORIES = {"daisy": "Composites/Daisy", "dandelion": "Composites/Dandelion", "sunflowers": "Composites/Sunflower",
              "roses": "Shrubs/Rose", "tulips": "Bulbs/Tulip"}
# the first word names the category; the others share no word with it
VARIETIES = {"daisy": ["daisy", "marguerite", "oxeye", "bellis perennis"],
             "dandelion": ["dandelion", "taraxacum", "blowball", "lion's tooth"],
             "sunflowers": ["sunflower", "helianthus", "teddy bear", "giant russian"],
             "roses": ["rose", "floribunda", "hybrid tea", "rambler"],
             "tulips": ["tulip", "tulipa", "darwin hybrid", "triumph"]}
BRANDS = ["Verdano", "Bloomly", "Hortus", "Petalia", "GreenKeep", "Florin", "Seedwise", "Gardeno"]
SIZES = ["10 seeds", "50 seeds", "1 plant", "3 bulbs", "2 l pot", "bare root"]
NOISE_SHARE = 0.2


def misspelt(word: str, rng: np.random.Generator) -> str:
    letters = list(word)
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.integers(len(letters)))
        kind = int(rng.integers(3))
        if kind == 0:
            letters.insert(at, letters[at])
        elif kind == 1 and len(letters) > 3:
            del letters[at]
        else:
            letters[at] = "aeiou"[int(rng.integers(5))]
    return "".join(letters)


def product_name(flower: str, rng: np.random.Generator) -> str:
    words = [str(rng.choice(BRANDS)), str(rng.choice(VARIETIES[flower], p=[0.5, 0.2, 0.15, 0.15])),
             str(rng.choice(SIZES))]
    if rng.random() < NOISE_SHARE:
        words[1] = misspelt(words[1], rng)
    return " ".join(words)


def build(data: Path, folder: Path, catalog_photos: int, new_products: int) -> tuple[Path, Path]:
    """catalog.csv (photos grouped into products) and new.csv (new products from the other photos)."""
    rng = np.random.default_rng(SEED)
    files = sorted(data.glob("*/*/*.jpg"))
    order = rng.permutation(len(files))
    catalog_files, query_files = [files[i] for i in order[:catalog_photos]], [files[i] for i in order[catalog_photos:]]
    by_flower: dict[str, list[Path]] = {}
    for file in catalog_files:
        by_flower.setdefault(file.parent.name, []).append(file)
    rows = []
    for flower, photos in sorted(by_flower.items()):
        position = 0
        while position < len(photos):
            photo_count = int(rng.integers(1, 4))
            name, product = product_name(flower, rng), f"P{len(rows):05d}"
            for photo in photos[position:position + photo_count]:
                rows.append([str(photo.resolve()), name, CATEGORIES[flower], product])
            position += photo_count
    catalog = folder / "catalog.csv"
    with catalog.open("w", newline="") as handle:
        csv.writer(handle).writerows([["image", "name", "category", "product"], *rows])
    queries = folder / "new.csv"
    with queries.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "name", "truth"])
        for number in range(new_products):
            photo = query_files[number % len(query_files)]
            writer.writerow([str(photo.resolve()), product_name(photo.parent.name, rng), CATEGORIES[photo.parent.name]])
    return catalog, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "datasets" / "flowers")
    parser.add_argument("--catalog-photos", type=int, default=CATALOG_PHOTOS)
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file to merge the figures into.")
    args = parser.parse_args()
    import imgclf
    from imgclf.embeddings.embedder import Embedder

    record: dict = {"synthetic": "photos are the real flowers photos; categories, products, names, brands, sizes and "
                                 "spelling noise are generated (fixed seed)",
                    "catalog_photos": args.catalog_photos, "queries": args.queries}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        catalog, queries = build(args.data, folder, args.catalog_photos, args.queries)
        started = time.perf_counter()
        evaluation = imgclf.evaluate_match(catalog)
        record["evaluate"] = {
            "seconds": round(time.perf_counter() - started, 1), "image_weight_chosen": evaluation.image_weight,
            "reference": [evaluation.reference_items, evaluation.reference_products],
            "test": [evaluation.test_items, evaluation.test_products],
            "results": {name: {"accuracy": round(r.accuracy, 4), "top3_accuracy": round(r.top3_accuracy, 4),
                               "accuracy_at_80_coverage": round(r.accuracy_at_coverage, 4),
                               "threshold": round(r.threshold, 4), "level_accuracy": [round(v, 4) for v in r.level_accuracy]}
                        for name, r in evaluation.results.items()}}
        print(f"held-out products: {evaluation.test_products} ({evaluation.test_items} photos) against "
              f"{evaluation.reference_products} ({evaluation.reference_items} photos); blend weight "
              f"{evaluation.image_weight:g}")
        print(f"{'scoring':<10}{'accuracy':>10}{'top-3':>8}{'@80%':>8}{'level 1':>9}{'level 2':>9}")
        for name, r in evaluation.results.items():
            print(f"{name:<10}{r.accuracy:>10.1%}{r.top3_accuracy:>8.1%}{r.accuracy_at_coverage:>8.1%}"
                  + "".join(f"{value:>9.1%}" for value in r.level_accuracy))

        embedder = Embedder.load(imgclf.api.DEFAULT_EMBEDDING_MODEL)
        with queries.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        photos = sorted({row["image"] for row in rows})
        started = time.perf_counter()
        embedded = embedder.embed_files([Path(photo) for photo in photos], description="Embedding new photos")
        record["embed_new_photos"] = {"photos": len(photos), "computed": embedded.computed,
                                      "seconds": round(time.perf_counter() - started, 1)}
        matcher_dir = folder / "matcher"
        started = time.perf_counter()
        imgclf.api.catalog_matcher(catalog, matcher=matcher_dir)
        record["fit_matcher_seconds"] = round(time.perf_counter() - started, 1)
        out = folder / "suggestions.csv"
        summary = imgclf.match_batch(catalog, queries, out, matcher=matcher_dir)
        with out.open(newline="") as handle:
            suggestions = list(csv.DictReader(handle))
        correct = np.array([row["top1"] == query["truth"] for row, query in zip(suggestions, rows)])
        sure = np.array([row["sure"] == "yes" for row in suggestions])
        record["batch"] = {"products": summary.products, "seconds": round(summary.seconds, 2),
                           "products_per_second": round(summary.rate, 1), "scoring": summary.scoring,
                           "accuracy": round(float(correct.mean()), 4), "sure_share": round(float(sure.mean()), 4),
                           "accuracy_when_sure": round(float(correct[sure].mean()), 4) if sure.any() else None}
        print(f"batch: {summary.products:,} products in {summary.seconds:.1f} s ({summary.rate:,.0f} products/s, "
              f"matching only: photos embedded and matcher fitted beforehand); accuracy {correct.mean():.1%}, "
              f"{sure.mean():.0%} sure (>= 0.5 at some level) with {record['batch']['accuracy_when_sure']:.1%} right")
    save(args.results, {"flowers-catalogue": record})


if __name__ == "__main__":
    main()
