"""What "normal" looks like for one model, measured at training time and kept in its bundle for monitoring.

```
model/
  reference.json          classes, the training prior, the novelty score and threshold, the drift test's settings
  reference.safetensors   unit-length pooled embeddings: a class-stratified sample of training images
                          (train) and of val (drift_reference); val's novelty scores (val_scores); the
                          model's linear classification head (head_weight, head_bias) for the novelty score
```

The embeddings are the model's own pooled features (the input of its
classification head, as the prediction log records them), so the monitor
sees what the model sees. **Novelty** is the negative largest logit of the
model's head on an image's features (``imgclf.watch.novelty`` says why);
an image scoring beyond 99% of val's photos is novel (so about 1% of
in-distribution photos are flagged, by construction). **Drift** is an MMD
permutation test of each window against val's embeddings
(``imgclf.watch.drift`` says why).
A model with no pooled features (a Keras bundle) or fewer than 30 val
images gets no reference and is monitored without drift and novelty.

A reference of format 1 (written before these two methods) is still read:
its two val halves together are the drift test's reference, so drift is
tested the new way; it has no head, so its novelty is the older
nearest-training-distance score with its stored threshold. Retraining
writes the current format.
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
from imgclf.watch.drift import REFERENCE_SIZE, TEST_SIZE, DriftCalibration, MMDTest, calibrate, sample_rows
from imgclf.watch.novelty import MAX_LOGIT, MaxLogit, NearestDistance, NoveltyScore, linear_head, unit_rows

log = logging.getLogger(__name__)

REFERENCE_JSON = "reference.json"
REFERENCE_TENSORS = "reference.safetensors"
REFERENCE_FORMAT = 2  # 2: max-logit novelty, permutation drift test; 1: nearest distance, fixed threshold
TRAIN_SAMPLE = 1000  # training embeddings kept, stratified by class (each costs a forward pass at training)
VAL_SAMPLE = 2000  # val embeddings examined at training
MIN_VAL = 30  # fewer val images: no reference (the thresholds would be guesses)
NOVELTY_QUANTILE = 0.99

Head = tuple[np.ndarray, np.ndarray]  # (classes, D) weight and (classes,) bias of the model's linear head


@dataclass
class Reference:
    """A model's reference statistics: what monitoring compares production with."""

    classes: list[str]
    prior: np.ndarray  # (classes,) training class shares (label frequencies for a multi-label model)
    multilabel: bool
    train: np.ndarray  # (N, D) unit-length training embeddings
    drift_reference: np.ndarray  # (R, D) unit-length val embeddings: the drift test's reference
    val_scores: np.ndarray  # sorted novelty scores of val images
    novelty_threshold: float
    drift: DriftCalibration
    embedding: str  # what the embeddings are, for the report
    head: Head | None = None  # the max-logit novelty score's head; None: the nearest-distance score
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def novelty_score(self) -> NoveltyScore:
        if "score" not in self._cache:
            self._cache["score"] = NearestDistance(self.train) if self.head is None else MaxLogit(*self.head)
        return self._cache["score"]

    def novelty(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, novel): each embedding's novelty score (higher is more novel) and whether it is past the bar."""
        scores = self.novelty_score(embeddings)
        return scores, scores > self.novelty_threshold

    def drift_test(self, embeddings: np.ndarray, seed: int = 0) -> tuple[float, float, float, int]:
        """(MMD^2, threshold, p-value, embeddings tested) of one window; a larger window is sampled down."""
        window = sample_rows(unit_rows(embeddings), self.drift.test_size, seed)
        if "test" not in self._cache:
            self._cache["test"] = MMDTest(self.drift_reference, self.drift.bandwidth)
        verdict = self._cache["test"].test(window, seed)
        return verdict.statistic, verdict.threshold, verdict.p_value, verdict.tested


def build_reference(train: np.ndarray, val: np.ndarray, classes: Sequence[str], prior: np.ndarray,
                    multilabel: bool, embedding: str, head: Head | None = None, seed: int = 0) -> Reference:
    """The reference from training and val embeddings (as the log records them) and the model's linear head if any."""
    train = unit_rows(train)
    score: NoveltyScore = NearestDistance(train) if head is None else MaxLogit(*head)
    scores = np.sort(score(val))
    shuffled = unit_rows(val)[np.random.default_rng(seed).permutation(len(val))]
    return Reference(list(classes), np.asarray(prior, dtype=np.float64), multilabel, train,
                     shuffled[:REFERENCE_SIZE], scores, float(np.quantile(scores, NOVELTY_QUANTILE)),
                     calibrate(shuffled, TEST_SIZE, seed), embedding, head)


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

    arrays = {"train": reference.train.astype(np.float16), "drift_reference": reference.drift_reference.astype(np.float16),
              "val_scores": reference.val_scores.astype(np.float32)}
    if reference.head is not None:
        arrays.update(head_weight=reference.head[0].astype(np.float32), head_bias=reference.head[1].astype(np.float32))
    with atomic_path(Path(bundle_dir) / REFERENCE_TENSORS) as partial:
        save_file({name: np.ascontiguousarray(array) for name, array in arrays.items()}, str(partial))
    facts = {"format": REFERENCE_FORMAT, "classes": reference.classes, "prior": [float(p) for p in reference.prior],
             "multilabel": reference.multilabel, "embedding": reference.embedding,
             "novelty": {"score": reference.novelty_score.kind, "threshold": reference.novelty_threshold,
                         "quantile": NOVELTY_QUANTILE, "val_images": len(reference.val_scores)},
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
        if facts.get("format") not in (1, REFERENCE_FORMAT):
            raise ValueError(f"format {facts.get('format')!r}, this imgclf reads 1 and {REFERENCE_FORMAT}")
        reference = _format_1(facts, arrays) if facts["format"] == 1 else _reference(facts, arrays)
        if reference.train.ndim != 2 or reference.drift_reference.shape[1:] != reference.train.shape[1:]:
            raise ValueError("the embedding arrays disagree in shape")
        return reference
    except Exception as error:  # json, safetensors and missing keys raise many types for a damaged pair
        raise ImgclfError(f"{path}: the monitoring reference cannot be read ({one_line(error)}); "
                          f"retrain, or delete {REFERENCE_JSON} and {REFERENCE_TENSORS} to monitor without it") from None


def _reference(facts: dict[str, Any], arrays: dict[str, np.ndarray]) -> Reference:
    head = (arrays["head_weight"], arrays["head_bias"]) if facts["novelty"]["score"] == MAX_LOGIT else None
    return Reference(list(facts["classes"]), np.asarray(facts["prior"], dtype=np.float64), bool(facts["multilabel"]),
                     arrays["train"].astype(np.float32), arrays["drift_reference"].astype(np.float32),
                     arrays["val_scores"].astype(np.float32), float(facts["novelty"]["threshold"]),
                     DriftCalibration.from_json(facts["drift"]), str(facts.get("embedding", "")), head)


def _format_1(facts: dict[str, Any], arrays: dict[str, np.ndarray]) -> Reference:
    """A reference written before the max-logit score and the permutation test: val's two halves are the reference."""
    log.info("this model's monitoring reference predates the current novelty score: novelty is the distance to the "
             "nearest training image, which misses new classes that look like known ones; retrain to get it")
    val = np.concatenate([arrays["drift_reference"], arrays["drift_calibration"]]).astype(np.float32)
    return Reference(list(facts["classes"]), np.asarray(facts["prior"], dtype=np.float64), bool(facts["multilabel"]),
                     arrays["train"].astype(np.float32), val[:REFERENCE_SIZE], arrays["val_distances"].astype(np.float32),
                     float(facts["novelty"]["threshold"]), DriftCalibration.from_json(facts["drift"]),
                     str(facts.get("embedding", "")))


def reference_from_training(model_dir: Path, pixels: Any, rows: dict[str, np.ndarray], targets: np.ndarray,
                            classes: Sequence[str], multilabel: bool,
                            val_features: np.ndarray | None = None,
                            train_features: Callable[[np.ndarray], np.ndarray] | None = None) -> Reference | None:
    """Embed a training sample and val with the written bundle, build the reference and store it beside the model.

    ``pixels`` are training's decoded images (indexable by row arrays),
    ``targets`` class indices (or 0/1 rows for a multi-label model);
    ``val_features``, when given, are val's features in ``rows["val"]``'s order
    from a pass already made (training's held-out pass), so only the training
    sample is embedded here; ``train_features``, when given, gives the features
    of training rows from what training kept (a tail's activations through the
    shipped tail), so nothing is embedded. Says why and returns None when the model has no
    pooled features or val is too small.
    """
    from imgclf.backends import RECORDS
    from imgclf.deploy.bundle import read_bundle_info
    from imgclf.deploy.classifier import Classifier

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
    val = rows["val"][:VAL_SAMPLE]
    classifier = Classifier.load(model_dir, runtime="torch")
    features = _features(classifier)
    if train_features is None or val_features is None:
        log.info(f"monitoring reference: embedding {len(sample):,} training"
                 f"{'' if val_features is not None else f' and {len(val):,} val'} images")
    train_embeddings = (_embed_rows(features, pixels, sample) if train_features is None
                        else np.asarray(train_features(sample), dtype=np.float16).astype(np.float32))
    val_embeddings = (_embed_rows(features, pixels, val) if val_features is None
                      else np.asarray(val_features[:len(val)], dtype=np.float16).astype(np.float32))  # as logged
    head = linear_head(getattr(classifier.runtime, "model", None), train_embeddings.shape[1])
    if head is None:
        log.info("monitoring reference: the model's head is not one linear layer, so novelty is the distance to the "
                 "nearest training image")
    all_labels = targets[rows["train"]]
    prior = all_labels.mean(axis=0) if multilabel else np.bincount(all_labels, minlength=len(classes)) / len(all_labels)
    reference = build_reference(train_embeddings, val_embeddings, classes, prior, multilabel,
                                f"pooled features of {info.architecture} ({train_embeddings.shape[1]} dimensions)", head)
    write_reference(reference, model_dir)
    return reference


def features_of(model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """(N, D) pooled features of decoded images (N, H, W, C), as the prediction log records them (float16 values)."""
    from imgclf.deploy.classifier import Classifier

    return _features(Classifier.load(model_dir, runtime="torch"))


def _features(classifier: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The classifier's pooled features as the log stores them (float16), with its TTA.

    The log keeps the features of the forward pass that answered (TTA's
    views averaged as the logits are); the reference must be made the same
    way, or every stream of a TTA model would look drifted.
    """
    return lambda pixels: np.asarray(classifier.logits_and_features(pixels)[1], dtype=np.float16).astype(np.float32)


def _embed_rows(features: Callable[[np.ndarray], np.ndarray], pixels: Any, rows: np.ndarray,
                chunk: int = 256) -> np.ndarray:
    """Features of rows of the decoded images, read ``chunk`` rows at a time."""
    return np.concatenate([features(np.asarray(pixels[rows[start:start + chunk]]))
                           for start in range(0, len(rows), chunk)])
