"""Monitoring figures: drift false alarms, how soon gradual drift is caught, novelty recall on an unseen class.

Usage: python benchmarks/monitor.py [--data ../shared/datasets/flowers] [--quick]

A flowers model is trained (the default photo recipe, ``--time-budget``
2m) on four classes of ``train/`` (sunflowers held out as "never seen"),
val carved from it (20%): the bundle's monitoring reference is made from
that split. The streams are built from the photos of ``val/``, which neither
training nor the reference saw; each request is one photo, classified (one view, no TTA: a
quarter of the forward passes) and embedded as the log records it
(:func:`imgclf.watch.reference.features_of`),
and the streams are cut into windows of 200 requests by the monitor's own
code (:func:`imgclf.watch.monitor.monitor_records`).

- ``no_drift``: five streams of 3,000 requests, each a run of random
  permutations of the known photos and their mirror images: the share of
  windows with a drift alarm (goal at most 5%), and with a novelty or
  class-share alarm.
- ``drift/<kind>``: 3,000 requests whose severity grows in eight steps from
  none to strong (brightness falling to 30%, Gaussian blur to radius 4, JPEG
  quality down to 5, a colour cast of +80 red / -40 blue), applied to the
  decoded image at the model's input size (each step answers 200 random
  known photos, its requests are permutations of them): requests until the first drift
  alarm (the end of that window), the severity then, and the accuracy lost
  by then (clean accuracy minus the alarm window's); ``threshold`` is the
  first window's (each window's test has its own permutation threshold).
- ``novelty``: 3,000 requests, sunflowers at 10%: the share of sunflower
  requests flagged novel (recall), the share of known-class requests
  flagged (false positives), and windows with a novelty alarm.
- ``novelty_scores``: the candidate novelty scores of
  ``benchmarks/novelty_scores.py`` on all the known and sunflower photos
  (and their mirror images), each calibrated on the run's val split (and a
  stratified sample of 1,000 of its training images): AUROC, recall and
  known photos flagged at val's 99th percentile.

``--quick`` trains for 30 s and builds shorter streams from 150 photos (a
smoke test of the script; its figures are not recorded). Accuracy figures, not
timings: it may run on a busy machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from novelty_scores import candidates, compare
from PIL import Image, ImageFilter

import imgclf
from imgclf.data.decode import decode_file
from imgclf.deploy.runtime_choice import cpu_model
from imgclf.watch.monitor import Records, WindowSpec, monitor_records
from imgclf.watch.reference import features_of, load_reference

RESULTS = Path(__file__).parent / "results" / "monitor.json"
NOVEL = "sunflowers"
WINDOW = 200
LEVELS = 8


def brightness(pixels: np.ndarray, s: float) -> np.ndarray:
    return (pixels * (1.0 - 0.7 * s)).astype(np.uint8)


def blur(pixels: np.ndarray, s: float) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(4.0 * s)))


def jpeg(pixels: np.ndarray, s: float) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=int(round(95 - 90 * s)))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def colour_cast(pixels: np.ndarray, s: float) -> np.ndarray:
    shifted = pixels.astype(np.int16) + np.array([80, 0, -40]) * s
    return np.clip(shifted, 0, 255).astype(np.uint8)


DRIFTS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "brightness": brightness, "blur": blur, "jpeg": jpeg, "colour_cast": colour_cast}


def train_model(data: Path, work: Path, quick: bool) -> Path:
    """The four-class flowers model (its run directory); sunflowers never seen."""
    manifest = work / "four_classes.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for folder in sorted((data / "train").iterdir()):
            if folder.name != NOVEL:
                writer.writerows([str(path), folder.name] for path in sorted(folder.glob("*.jpg")))
    result = imgclf.train(str(manifest), out=work / "run", val_fraction=0.2, test_fraction=0.0,
                          time_budget="30s" if quick else "2m")
    return result.run_dir


class Model:
    """The trained bundle as the server answers: decoded photos to probabilities and logged features."""

    def __init__(self, run: Path) -> None:
        self.classifier = imgclf.load(run, runtime="torch", tta=False)  # one view: a quarter of the forward passes
        self.features = features_of(run / "model")
        self.reference = load_reference(run)
        assert self.reference is not None, "training wrote no monitoring reference"
        info = self.classifier.info
        self.size, self.resize = (info.image_size, info.image_size), info.resize

    def decode(self, paths: list[Path]) -> np.ndarray:
        return np.stack([decode_file(path, self.size, policy=self.resize).pixels for path in paths])

    def answer(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class indices, features) of decoded images, in batches of 64."""
        predicted, features = [], []
        for start in range(0, len(pixels), 64):
            batch = pixels[start:start + 64]
            predicted.append(self.classifier.decide(self.classifier.predict_pixels(batch)))
            features.append(self.features(batch))
        return np.concatenate(predicted), np.concatenate(features)


def monitor(model: Model, predicted: np.ndarray, features: np.ndarray) -> list:
    """The windows of a stream, as ``imgclf monitor --window 200`` cuts and judges them."""
    n = len(predicted)
    records = Records(np.arange(n, dtype=np.float64), [model.classifier.classes[i] for i in predicted],
                      np.full(n, np.nan), features, np.ones(n, dtype=bool), [None] * n)
    return monitor_records(records, WindowSpec("requests", WINDOW), model.classifier.classes, model.reference,
                           0.5).windows


def permutations(pool: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` indices into ``pool`` items: random permutations one after another (no repeats within a window)."""
    runs = [rng.permutation(pool) for _ in range(length // pool + 1)]
    return np.concatenate(runs)[:length]


def alarm_shares(windows: list) -> dict:
    return {f"{kind}_alarm_rate": float(np.mean([kind in window.alarms for window in windows]))
            for kind in ("drift", "novelty", "class-shares")}


def no_drift(model: Model, answered: tuple[np.ndarray, np.ndarray], streams: int, length: int) -> dict:
    """Known photos and their mirrors (``answered``) in random order: how often a window raises each alarm."""
    predicted, features = answered
    windows = []
    for seed in range(streams):
        order = permutations(len(predicted), length, np.random.default_rng(seed))
        windows += monitor(model, predicted[order], features[order])
    return {"streams": streams, "requests_per_stream": length, "windows": len(windows), **alarm_shares(windows)}


def gradual(model: Model, known: np.ndarray, labels: np.ndarray, drift: Callable, length: int, pool: int,
            seed: int) -> dict:
    """Severity growing in LEVELS steps along the stream: first drift alarm, and the accuracy lost by then.

    Each step answers ``pool`` random known photos at its severity and its
    requests are permutations of them (no photo twice within a window).
    """
    rng = np.random.default_rng(seed)
    per_level = length // LEVELS
    chosen, predicted, features, severity = [], [], [], []
    for level in range(LEVELS):
        s = level / (LEVELS - 1)
        photos = rng.choice(len(known), min(pool, len(known)), replace=False)
        answers, embedded = model.answer(np.stack([drift(known[i], s) for i in photos]))
        order = permutations(len(photos), per_level, rng)
        chosen.append(photos[order])
        predicted.append(answers[order])
        features.append(embedded[order])
        severity += [s] * per_level
    photos, predicted_all = np.concatenate(chosen), np.concatenate(predicted)
    correct = predicted_all == labels[photos]
    windows = monitor(model, predicted_all, np.concatenate(features))
    first = next((index for index, window in enumerate(windows) if window.drift), None)
    clean = float(correct[:per_level].mean())
    case = {"requests": len(photos), "clean_accuracy": clean,
            "accuracy_by_severity": [float(correct[i * per_level:(i + 1) * per_level].mean()) for i in range(LEVELS)],
            "drift_statistic_by_window": [window.drift_mmd2 for window in windows],
            "threshold": windows[0].drift_threshold}
    if first is None:
        return {**case, "first_alarm_after_requests": None}
    end = min((first + 1) * WINDOW, len(photos))
    alarm_window = correct[first * WINDOW:end]
    return {**case, "first_alarm_after_requests": end, "severity_at_alarm": float(severity[end - 1]),
            "accuracy_at_alarm": float(alarm_window.mean()), "accuracy_lost_by_alarm": clean - float(alarm_window.mean())}


def novelty(model: Model, answered: tuple[np.ndarray, np.ndarray], novel: tuple[np.ndarray, np.ndarray], length: int,
            seed: int) -> dict:
    """Sunflowers (``novel``) at 10% among the known photos (``answered``; mirrors in both): recall, false positives."""
    rng = np.random.default_rng(seed)
    predicted_known, features_known = answered
    predicted_novel, features_novel = novel
    is_novel = rng.random(length) < 0.10
    known_order = permutations(len(predicted_known), int((~is_novel).sum()), rng)
    novel_order = permutations(len(predicted_novel), int(is_novel.sum()), rng)
    predicted = np.zeros(length, dtype=np.int64)
    features = np.zeros((length, features_known.shape[1]), dtype=np.float32)
    predicted[~is_novel], features[~is_novel] = predicted_known[known_order], features_known[known_order]
    predicted[is_novel], features[is_novel] = predicted_novel[novel_order], features_novel[novel_order]
    assert model.reference is not None
    _, flagged = model.reference.novelty(features)
    windows = monitor(model, predicted, features)
    return {"requests": length, "novel_share": float(is_novel.mean()), "recall": float(flagged[is_novel].mean()),
            "known_flagged": float(flagged[~is_novel].mean()), **alarm_shares(windows)}


def novelty_scores(model: Model, run: Path, known: np.ndarray, novel: np.ndarray, train_sample: int) -> dict:
    """The candidate scores, calibrated on the run's val split and a stratified sample of its training images."""
    with (run / "split.csv").open(newline="") as handle:
        split = list(csv.DictReader(handle))
    classes = model.classifier.classes
    train = [row for row in split if row["split"] == "train"]
    train = [train[i] for i in np.sort(np.random.default_rng(0).choice(len(train), train_sample, replace=False))]
    val = [row for row in split if row["split"] == "val"]
    train_features, val_features = (np.concatenate([model.features(model.decode([Path(row["path"]) for row in rows[i:i + 64]]))
                                                    for i in range(0, len(rows), 64)]) for rows in (train, val))
    assert model.reference is not None and model.reference.head is not None
    scores = candidates(train_features, np.array([classes.index(row["label"]) for row in train]), val_features,
                        model.reference.head, model.classifier.info.temperature)
    return {"train_sample": len(train), "val_images": len(val), "known_photos": len(known), "novel_photos": len(novel),
            **compare(scores, val_features, known, novel)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--quick", action="store_true", help="a short smoke run; its figures are not recorded")
    args = parser.parse_args()
    if not (args.data / "val").is_dir():
        raise SystemExit(f"{args.data}: the flowers dataset (train/ and val/ folders) is not there")
    length, streams, pool, photos = (600, 2, 40, 150) if args.quick else (3000, 5, 200, None)
    with tempfile.TemporaryDirectory(prefix="imgclf-monitor-bench-") as folder:
        run = train_model(args.data, Path(folder), args.quick)
        model = Model(run)
        classes = model.classifier.classes
        known_paths = [(path, classes.index(path.parent.name)) for name in classes
                       for path in sorted((args.data / "val" / name).glob("*.jpg"))]
        known_paths = [known_paths[i] for i in np.random.default_rng(0).permutation(len(known_paths))[:photos]]
        known = model.decode([path for path, _ in known_paths])
        labels = np.array([label for _, label in known_paths])
        novel = model.decode(sorted((args.data / "val" / NOVEL).glob("*.jpg"))[:photos])
        answered = model.answer(np.concatenate([known, known[:, :, ::-1]]))
        novel_answered = model.answer(np.concatenate([novel, novel[:, :, ::-1]]))
        assert model.reference is not None
        cases = {"reference": {"val_false_alarm_rate": model.reference.drift.false_alarm_rate,
                               "drift_test_size": model.reference.drift.test_size,
                               "drift_reference": len(model.reference.drift_reference),
                               "novelty_score": model.reference.novelty_score.kind,
                               "train_sample": len(model.reference.train),
                               "val_images": len(model.reference.val_scores),
                               "val_accuracy": model.classifier.info.metrics.get("val_accuracy"),
                               "model": model.classifier.info.architecture,
                               "image_size": model.classifier.info.image_size},
                 "no_drift": no_drift(model, answered, streams, length),
                 **{f"drift/{name}": gradual(model, known, labels, drift, length, pool, seed)
                    for seed, (name, drift) in enumerate(DRIFTS.items())},
                 "novelty": novelty(model, answered, novel_answered, length, seed=0),
                 "novelty_scores": novelty_scores(model, run, answered[1], novel_answered[1], 200 if args.quick else 1000)}
    print(json.dumps(cases, indent=1))
    if args.quick:
        return
    machine = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    RESULTS.write_text(json.dumps({"machine": machine, "window_requests": WINDOW, "cases": cases}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
