"""What "normal" looks like for one model, measured at training time and kept in its bundle for monitoring.

```
model/
  reference.json          classes, the training prior, the novelty threshold, the drift test's calibration
  reference.safetensors   unit-length pooled embeddings: a class-stratified sample of training images
                          (train), and val split in two halves (drift_reference, drift_calibration);
                          val's distances to the nearest training embedding (val_distances)
```

The embeddings are the model's own pooled features (the input of its
classification head, as the prediction log records them), so the monitor
sees what the model sees. **Novelty** is an image's cosine distance to the
nearest training embedding; an image farther than 99% of val's photos are
is novel (so about 1% of in-distribution photos are flagged, by
construction). **Drift** is MMD against one val half, its threshold
measured on windows of the other (``imgclf.watch.drift`` says why).
A model with no pooled features (a Keras bundle) or fewer than 30 val
images gets no reference and is monitored without drift and novelty.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ImgclfError, one_line
from imgclf.files import atomic_path, write_text_atomic
from imgclf.watch.drift import TEST_SIZE, DriftCalibration, MMDTest, NullWindows, median_bandwidth, sample_rows

log = logging.getLogger(__name__)

REFERENCE_JSON = "reference.json"
REFERENCE_TENSORS = "reference.safetensors"
REFERENCE_FORMAT = 1
TRAIN_SAMPLE = 1000  # training embeddings kept, stratified by class (each costs a forward pass at training)
HALF_SAMPLE = 1000  # val embeddings kept in each half
MIN_VAL = 30  # fewer val images: no reference (the thresholds would be guesses)
NOVELTY_QUANTILE = 0.99
ARRAYS = ("train", "drift_reference", "drift_calibration", "val_distances")


@dataclass
class Reference:
    """A model's reference statistics: what monitoring compares production with."""

    classes: list[str]
    prior: np.ndarray  # (classes,) training class shares (label frequencies for a multi-label model)
    multilabel: bool
    train: np.ndarray  # (N, D) unit-length training embeddings
    drift_reference: np.ndarray  # (R, D) unit-length val embeddings: the drift test's reference
    drift_calibration: np.ndarray  # (C, D) the other val half: where the threshold was measured
    val_distances: np.ndarray  # sorted novelty scores of all val images
    novelty_threshold: float
    drift: DriftCalibration
    embedding: str  # what the embeddings are, for the report
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def novelty(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, novel): each embedding's cosine distance to the nearest training one, and whether it is novel."""
        scores = nearest_distances(unit_rows(embeddings), self.train)
        return scores, scores > self.novelty_threshold

    def drift_test(self, embeddings: np.ndarray, seed: int = 0) -> tuple[float, float, float, int]:
        """(MMD^2, threshold, p-value, embeddings tested) of one window; a larger window is sampled down.

        A window smaller than the calibrated size gets a threshold measured
        for its own size, on the same val windows (once per size).
        """
        window = sample_rows(unit_rows(embeddings), self.drift.test_size, seed)
        test = self._cache.get("test") or self._cache.setdefault(
            "test", MMDTest(self.drift_reference, self.drift.bandwidth))
        calibration = self.calibration_for(len(window))
        statistic = test.statistic(window)
        return statistic, calibration.threshold, calibration.p_value(statistic), len(window)

    def calibration_for(self, size: int) -> DriftCalibration:
        """The stored calibration, or one measured now for windows of ``size`` embeddings."""
        if size >= self.drift.test_size:
            return self.drift
        if size not in self._cache:
            null = self._cache.get("null") or self._cache.setdefault(
                "null", NullWindows(MMDTest(self.drift_reference, self.drift.bandwidth), self.drift_calibration))
            self._cache[size] = null.calibrate(size)
        return self._cache[size]


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    rows = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def nearest_distances(queries: np.ndarray, train: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Cosine distance of each unit query row to its nearest unit training row, in chunks of ``chunk`` queries."""
    if not len(queries):
        return np.zeros(0, dtype=np.float32)
    best = [1.0 - (queries[start:start + chunk] @ train.T).max(axis=1) for start in range(0, len(queries), chunk)]
    return np.maximum(np.concatenate(best), 0.0).astype(np.float32)


def build_reference(train: np.ndarray, val: np.ndarray, classes: Sequence[str], prior: np.ndarray,
                    multilabel: bool, embedding: str, seed: int = 0) -> Reference:
    """The reference from training embeddings (already sampled) and val's: novelty threshold, drift calibration."""
    train, val = unit_rows(train), unit_rows(val)
    order = np.random.default_rng(seed).permutation(len(val))
    half = len(val) // 2
    drift_reference = val[order[:half]][:HALF_SAMPLE]
    drift_calibration = val[order[half:]][:HALF_SAMPLE]
    distances = np.sort(nearest_distances(val, train))
    null = NullWindows(MMDTest(drift_reference, median_bandwidth(drift_reference)), drift_calibration)
    return Reference(list(classes), np.asarray(prior, dtype=np.float64), multilabel, train, drift_reference,
                     drift_calibration, distances, float(np.quantile(distances, NOVELTY_QUANTILE)),
                     null.calibrate(TEST_SIZE), embedding)


def stratified_rows(rows: np.ndarray, labels: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """At most ``cap`` of ``rows``, each class keeping its share (at least one image of each class)."""
    if len(rows) <= cap:
        return rows
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = rows[labels == label]
        keep = max(1, int(round(cap * len(members) / len(rows))))
        chosen.append(rng.choice(members, min(keep, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))[:cap]


def write_reference(reference: Reference, bundle_dir: Path) -> None:
    """Write the two reference files into the bundle folder, each atomically, the JSON (which marks them whole) last."""
    from safetensors.numpy import save_file

    arrays = {"train": reference.train.astype(np.float16),
              "drift_reference": reference.drift_reference.astype(np.float16),
              "drift_calibration": reference.drift_calibration.astype(np.float16),
              "val_distances": reference.val_distances.astype(np.float32)}
    with atomic_path(Path(bundle_dir) / REFERENCE_TENSORS) as partial:
        save_file({name: np.ascontiguousarray(array) for name, array in arrays.items()}, str(partial))
    facts = {"format": REFERENCE_FORMAT, "classes": reference.classes, "prior": [float(p) for p in reference.prior],
             "multilabel": reference.multilabel, "embedding": reference.embedding,
             "novelty": {"threshold": reference.novelty_threshold, "quantile": NOVELTY_QUANTILE,
                         "val_images": len(reference.val_distances)},
             "train_sample": len(reference.train), "drift": reference.drift.to_json()}
    write_text_atomic(Path(bundle_dir) / REFERENCE_JSON, json.dumps(facts, indent=1) + "\n")


def load_reference(bundle_dir: str | Path) -> Reference | None:
    """The bundle's reference statistics, or None when it has none; a damaged pair is a one-line error."""
    from safetensors.numpy import load_file

    directory = Path(bundle_dir)
    if (directory / "model").is_dir() and not (directory / REFERENCE_JSON).exists():
        directory = directory / "model"  # a run directory
    path = directory / REFERENCE_JSON
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
        arrays = load_file(str(directory / REFERENCE_TENSORS))
        if facts.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"format {facts.get('format')!r}, this imgclf reads {REFERENCE_FORMAT}")
        train = arrays["train"].astype(np.float32)
        if train.ndim != 2 or any(arrays[name].shape[1:] != train.shape[1:] for name in ARRAYS[1:3]):
            raise ValueError("the embedding arrays disagree in shape")
        return Reference(list(facts["classes"]), np.asarray(facts["prior"], dtype=np.float64),
                         bool(facts["multilabel"]), train, arrays["drift_reference"].astype(np.float32),
                         arrays["drift_calibration"].astype(np.float32), arrays["val_distances"].astype(np.float32),
                         float(facts["novelty"]["threshold"]), DriftCalibration.from_json(facts["drift"]),
                         str(facts.get("embedding", "")))
    except Exception as error:  # json, safetensors and missing keys raise many types for a damaged pair
        raise ImgclfError(f"{path}: the monitoring reference cannot be read ({one_line(error)}); "
                          f"retrain, or delete {REFERENCE_JSON} and {REFERENCE_TENSORS} to monitor without it") from None


def reference_from_training(model_dir: Path, pixels: Any, rows: dict[str, np.ndarray], targets: np.ndarray,
                            classes: Sequence[str], multilabel: bool,
                            val_features: np.ndarray | None = None) -> Reference | None:
    """Embed a training sample and val with the written bundle, build the reference and store it beside the model.

    ``pixels`` are training's decoded images (indexable by row arrays),
    ``targets`` class indices (or 0/1 rows for a multi-label model);
    ``val_features``, when given, are val's features in ``rows["val"]``'s order
    from a pass already made (training's held-out pass), so only the training
    sample is embedded here. Says why and returns None when the model has no
    pooled features or val is too small.
    """
    from imgclf.backends import RECORDS
    from imgclf.deploy.bundle import read_bundle_info

    info = read_bundle_info(model_dir)
    record = RECORDS.get(info.backend)
    if record is None or not record.embeddings:
        log.info(f"no monitoring reference: {info.backend} models have no pooled embeddings to compare "
                 "(imgclf monitor will report classes and confidence only)")
        return None
    if len(rows["val"]) < MIN_VAL:
        log.info(f"no monitoring reference: {len(rows['val'])} val image(s), at least {MIN_VAL} are needed to "
                 "calibrate drift and novelty thresholds")
        return None
    train_labels = targets[rows["train"]].argmax(axis=1) if multilabel else targets[rows["train"]]
    sample = stratified_rows(rows["train"], train_labels, TRAIN_SAMPLE)
    val = rows["val"][:2 * HALF_SAMPLE]
    features = features_of(model_dir)
    log.info(f"monitoring reference: embedding {len(sample):,} training"
             f"{'' if val_features is not None else f' and {len(val):,} val'} images")
    train_embeddings = _embed_rows(features, pixels, sample)
    val_embeddings = (_embed_rows(features, pixels, val) if val_features is None
                      else np.asarray(val_features[:len(val)], dtype=np.float16).astype(np.float32))  # as logged
    all_labels = targets[rows["train"]]
    prior = all_labels.mean(axis=0) if multilabel else np.bincount(all_labels, minlength=len(classes)) / len(all_labels)
    reference = build_reference(train_embeddings, val_embeddings, classes, prior, multilabel,
                                f"pooled features of {info.architecture} ({train_embeddings.shape[1]} dimensions)")
    write_reference(reference, model_dir)
    return reference


def features_of(model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """(N, D) pooled features of decoded images (N, H, W, C), as the prediction log records them (float16 values).

    The log keeps the features of the forward pass that answered (TTA's
    views averaged as the logits are); the reference must be made the same
    way, or every stream of a TTA model would look drifted.
    """
    from imgclf.deploy.classifier import Classifier

    classifier = Classifier.load(model_dir, runtime="torch")
    # as the log stores them: float16
    return lambda pixels: np.asarray(classifier.logits_and_features(pixels)[1], dtype=np.float16).astype(np.float32)


def _embed_rows(features: Callable[[np.ndarray], np.ndarray], pixels: Any, rows: np.ndarray,
                chunk: int = 256) -> np.ndarray:
    """Features of rows of the decoded images, read ``chunk`` rows at a time."""
    return np.concatenate([features(np.asarray(pixels[rows[start:start + chunk]]))
                           for start in range(0, len(rows), chunk)])
