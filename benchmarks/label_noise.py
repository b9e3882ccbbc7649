"""Planted problems in the flowers set: how many inspect's checks and the label-error list find, and what fixing costs.

Usage: python benchmarks/label_noise.py [--data ../shared/datasets/flowers] [--cifar ../shared/datasets/cifar10] [--parts quality,labels] [--quick]

Part ``quality`` (no training; accuracy only, not timing): a copy of the
flowers training split (links to the files) in which disjoint, seeded
shares of the photos are replaced by a planted problem, each ``--share``
(3%) of the split: ``blur`` (Gaussian blur of radius 2 px on photos whose
longer side is at most 320 px), ``dark`` (brightness times 0.25),
``small`` (shrunk to 40 px on the longer side), and ``pasted``: CIFAR-10
test images (32 px, enlarged to 240 px so the size check alone cannot find
them) pasted into random flowers class folders. ``imgclf.inspect`` with
``outliers`` runs on it. Recorded per planted kind: the share found by the
check meant for it (blurry, dark, odd-size, outlier) and by any check; for
the photos left clean, the share each check flags (the cost of the checks).

Part ``labels`` (training runs; the lead runs it, several minutes each on a
CPU): the flowers training labels flipped at 5% and 10% (seeded, to another
class), the val split clean. For each rate: a run on the noisy labels with
the default photo recipe; its label-error list from 5-fold out-of-fold
predictions (``imgclf.evaluate(run, data, split="train", label_issues=True,
folds=5)``, the list the review page shows); precision at k, k = the number
flipped (the share of flipped labels among the list's first k); val
accuracy trained on the noisy labels, trained with the list's first k
suggestions applied as a corrections file, and trained on the clean labels.

``--quick``: a few hundred images, a tiny fastnet for two epochs and 2
folds, to check that the script runs end to end; its figures mean nothing
and are not written.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

import imgclf
from imgclf.data import corrections
from imgclf.data.sources import ImageDataset, Item, load_source, write_manifest
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "label_noise.json"
MEANT_FOR = {"blur": "blurry", "dark": "dark", "small": "odd-size", "pasted": "outlier"}
RATES = (0.05, 0.10)
QUICK_IMAGES = 300
QUICK_RECIPE = {"model": "fastnet", "model_args": {"widths": [16, 32, 32], "depth": 1}, "image_size": 32,
                "epochs": 2, "batch_size": 32, "precision": "fp32"}


def plant(image: Image.Image, kind: str) -> Image.Image:
    """``image`` with the planted problem ``kind``."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(2))
    if kind == "dark":
        return ImageEnhance.Brightness(image).enhance(0.25)
    if kind == "small":
        scale = 40 / max(image.size)
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.LANCZOS)
    raise ValueError(kind)


def planted_folder(train: list[Item], cifar: list[Item], share: float, folder: Path, seed: int) -> dict[str, str]:
    """``folder/<class>/<file>`` for every training photo (a link, or the planted copy); {path: planted kind}."""
    rng = random.Random(seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    count = max(1, round(share * len(train)))
    kinds = {index: kind for position, kind in enumerate(("blur", "dark", "small"))
             for index in order[position * count:(position + 1) * count]}
    planted: dict[str, str] = {}
    classes = sorted({item.label for item in train})
    for index, item in enumerate(train):
        target = folder / item.label / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if index in kinds:
            plant(Image.open(item.path).convert("RGB"), kinds[index]).save(target, quality=90)
            planted[str(target)] = kinds[index]
        else:
            target.symlink_to(item.path)
    for number, item in enumerate(rng.sample(cifar, count)):
        target = folder / rng.choice(classes) / f"cifar-{number}-{item.label}.jpg"
        Image.open(item.path).convert("RGB").resize((240, 240), Image.Resampling.BICUBIC).save(target, quality=90)
        planted[str(target)] = "pasted"
    return planted


def quality_part(data: Path, cifar_root: Path, share: float, quick: bool, scratch: Path) -> dict:
    """Recall of each planted kind (by the check meant for it, by any check) and the clean photos' flagged shares."""
    train = load_source(data).split_items("train")
    cifar = load_source(cifar_root).split_items("test")
    if quick:
        train = train[:: max(1, len(train) // QUICK_IMAGES)][:QUICK_IMAGES]
    planted = planted_folder(train, cifar, share, scratch / "planted", seed=0)
    report = imgclf.inspect(scratch / "planted", out=scratch / "inspect-planted", outliers=True).report
    issues = [*(report.quality or {}).get("issues", []), *(report.outliers or {}).get("issues", [])]
    found: dict[str, set[str]] = {}
    for issue in issues:
        found.setdefault(issue["path"], set()).add(issue["kind"])
    results: dict = {}
    for kind, check in MEANT_FOR.items():
        paths = [path for path, planted_kind in planted.items() if planted_kind == kind]
        results[kind] = {"planted": len(paths), "check": check,
                         "found_by_its_check": round(sum(check in found.get(p, ()) for p in paths) / len(paths), 4),
                         "found_by_any_check": round(sum(bool(found.get(p)) for p in paths) / len(paths), 4)}
    clean = [str(item.path) for item in load_source(scratch / "planted").items if str(item.path) not in planted]
    kinds = sorted({kind for kinds in found.values() for kind in kinds} | set(MEANT_FOR.values()))
    results["clean"] = {"photos": len(clean), "flagged_by_any_check": round(sum(bool(found.get(p)) for p in clean)
                                                                           / len(clean), 4),
                        **{f"flagged_{kind}": round(sum(kind in found.get(p, ()) for p in clean) / len(clean), 4)
                           for kind in kinds}}
    results["notes"] = "; ".join([*(report.quality or {}).get("notes", []),
                                  *([report.outliers["note"]] if report.outliers and "note" in report.outliers else [])])
    return results


def flipped_manifest(dataset: ImageDataset, rate: float, path: Path, seed: int) -> set[str]:
    """The dataset with ``rate`` of its training labels flipped to another class, as a manifest; the flipped paths."""
    rng = random.Random(seed)
    train = [index for index, item in enumerate(dataset.items) if item.split == "train"]
    flipped = set(rng.sample(train, round(rate * len(train))))
    items = [Item(item.path, (rng.choice([name for name in dataset.classes if name != item.label]),), item.split)
             if index in flipped else item for index, item in enumerate(dataset.items)]
    write_manifest(dataset.with_items(items), path)
    return {str(dataset.items[index].path) for index in flipped}


def held_out_accuracy(result: object) -> float:
    metrics = result.metrics  # type: ignore[attr-defined]
    return round(float(metrics.get("test_accuracy", metrics.get("val_accuracy"))), 4)


def labels_part(data: Path, quick: bool, scratch: Path) -> dict:
    """Precision at k of the label-error list, and val accuracy noisy / with its suggestions applied / clean."""
    dataset = load_source(data)
    if quick:
        dataset = dataset.with_items(dataset.items[:: max(1, len(dataset.items) // QUICK_IMAGES)])
    recipe = QUICK_RECIPE if quick else {}
    folds = 2 if quick else 5
    clean_manifest = scratch / "clean.csv"
    write_manifest(dataset, clean_manifest)
    clean = imgclf.train(clean_manifest, out=scratch / "runs" / "clean", overwrite=True, **recipe)
    results: dict = {"clean": {"val_accuracy": held_out_accuracy(clean)}}
    for rate in RATES:
        name = f"flipped-{rate:.0%}"
        manifest = scratch / f"{name}.csv"
        flipped = flipped_manifest(dataset, rate, manifest, seed=0)
        noisy = imgclf.train(manifest, out=scratch / "runs" / name, overwrite=True, **recipe)
        evaluation = imgclf.evaluate(noisy.run_dir, manifest, split="train", label_issues=True, folds=folds,
                                     out=scratch / "runs" / name / "label-issues")
        top = evaluation.label_issues[:len(flipped)]
        fixes = [corrections.Correction(issue["path"], "relabel", issue["predicted"], "label-error list")
                 for issue in top]
        fixes_file = corrections.write(scratch / f"{name}-fixes.csv", fixes)
        fixed = imgclf.train(manifest, out=scratch / "runs" / f"{name}-fixed", overwrite=True,
                             corrections=fixes_file, **recipe)
        results[name] = {"flipped": len(flipped), "listed": len(evaluation.label_issues), "folds": folds,
                         "precision_at_k": round(sum(issue["path"] in flipped for issue in top) / len(flipped), 4),
                         "val_accuracy_noisy": held_out_accuracy(noisy),
                         "val_accuracy_top_k_applied": held_out_accuracy(fixed)}
        print(name, json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--cifar", type=Path, default=Path("../shared/datasets/cifar10"))
    parser.add_argument("--parts", default="quality,labels")
    parser.add_argument("--share", type=float, default=0.03)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = {**existing, "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder).resolve()  # inspect names files under the resolved folder
        if "quality" in args.parts:
            results["planted_quality"] = quality_part(args.data, args.cifar, args.share, args.quick, scratch)
            print(json.dumps(results["planted_quality"], indent=2), flush=True)
        if "labels" in args.parts:
            results["planted_label_noise"] = labels_part(args.data, args.quick, scratch)
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
