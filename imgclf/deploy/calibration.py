"""Temperature scaling: one scalar T that makes a classifier's probabilities honest.

A network trained with cross-entropy is usually over-confident: its top
probability is higher than its accuracy. Dividing every logit by one
temperature T > 1 (fitted on the validation split by minimising the
negative log-likelihood, Guo et al. 2017) fixes most of that, and since it
scales all logits alike it never changes which class wins. T is stored in
the bundle's ``model.json``; :class:`~imgclf.deploy.classifier.Classifier`
applies it for every runtime, so predict, evaluate, serve and exports agree.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from imgclf.deploy.bundle import MODEL_FILE, BundleInfo, find_bundle, read_bundle_info, update_bundle_info
from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

CALIBRATION_BINS = 15  # confidence bins of the calibration error and the reliability diagram
MIN_CALIBRATION_IMAGES = 20  # fewer validation images cannot tell a temperature's effect from chance
# The fitted T is kept only if it lowers the validation log loss by at least this share: T is fitted on the
# same images, and a smaller gain is within what fitting one number to them gives by chance.
MIN_RELATIVE_GAIN = 0.01
LOG_T_BOUNDS = (-4.0, 4.0)  # T between 0.02 and 55: beyond that the logits carry no usable scale


@dataclass
class Calibration:
    """The temperature (fitted on validation log loss) and the validation figures before and after it.

    ``kept_one`` says, in one line, why T stayed 1 when it did (empty when the fitted T is used).
    """

    temperature: float
    images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    kept_one: str = ""


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the images in each."""
    confidence, accuracy, counts = reliability(labels, probabilities, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / max(counts.sum(), 1))


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy, count (for the reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / counts
        accuracy = np.bincount(which, correct.astype(float), minlength=bins) / counts
    return mean_confidence, accuracy, counts


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against integer ``labels``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return float(-log_softmax(scaled, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the validation NLL of ``softmax(logits / T)`` (L-BFGS-B on log T, exact gradient)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true_logit = logits[np.arange(len(labels)), labels]

    def loss_and_gradient(log_t: np.ndarray) -> tuple[float, np.ndarray]:
        temperature = float(np.exp(log_t[0]))
        scaled = logits / temperature
        log_probabilities = log_softmax(scaled, axis=1)
        loss = -log_probabilities[np.arange(len(labels)), labels].mean()
        expected_logit = (softmax(scaled, axis=1) * logits).sum(axis=1)
        # d loss / d log T = -(E_p[z] - z_y) / T, averaged
        gradient = -np.mean(expected_logit - true_logit) / temperature
        return float(loss), np.array([gradient])

    result = minimize(loss_and_gradient, np.zeros(1), jac=True, method="L-BFGS-B", bounds=[LOG_T_BOUNDS])
    return float(np.exp(result.x[0]))


def calibrate_logits(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit T on (logits, labels) by log loss and measure log loss and ECE before and after.

    T stays 1 (and ``kept_one`` says why) when val is too small to tell, when
    every image is already right (the log loss then keeps falling as T goes
    to 0: there is nothing to fit), or when the fitted T lowers the log loss
    by less than :data:`MIN_RELATIVE_GAIN`. ECE is reported, not
    optimised: on a small val split it can rise while the log loss falls.
    """
    if len(labels) < 2:
        raise ImgclfError(f"temperature scaling needs labelled validation images; found {len(labels)}. "
                          "Give a dataset with a val split (or more images)")
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    temperature, kept_one = _chosen_temperature(logits, labels)
    return Calibration(
        temperature=round(temperature, 6), images=int(len(labels)),
        nll_before=round(negative_log_likelihood(logits, labels), 6),
        nll_after=round(negative_log_likelihood(logits, labels, temperature), 6),
        ece_before=round(expected_calibration_error(labels, softmax(logits, axis=1)), 6),
        ece_after=round(expected_calibration_error(labels, softmax(logits / temperature, axis=1)), 6),
        kept_one=kept_one)


def _chosen_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """The temperature to use, and why it is 1 when the fit is not used."""
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return 1.0, (f"T = 1 kept: val has {len(labels)} images, too few to tell a temperature's effect from "
                     f"chance (at least {MIN_CALIBRATION_IMAGES})")
    if bool((logits.argmax(axis=1) == labels).all()):
        return 1.0, "T = 1 kept: every val image is right, so log loss has no temperature to fit"
    fitted = fit_temperature(logits, labels)
    before, after = negative_log_likelihood(logits, labels), negative_log_likelihood(logits, labels, fitted)
    if before - after < MIN_RELATIVE_GAIN * before:
        return 1.0, (f"T = 1 kept: the fitted T = {fitted:.3f} lowers val log loss by only "
                     f"{(before - after) / before:.2%} (under {MIN_RELATIVE_GAIN:.0%})")
    return fitted, ""


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: ``softmax(z / T) ** T`` renormalised is ``softmax(z)``."""
    if temperature == 1.0:
        return probabilities
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, 1.0))
    return softmax(temperature * log_p, axis=1)


def store_calibration(bundle: Path, calibration: Calibration) -> Path:
    """Write T into the bundle's ``model.json`` (atomically) with the validation figures in its metrics."""
    metrics = {**read_bundle_info(bundle).metrics, "calibration": asdict(calibration)}
    update_bundle_info(bundle, temperature=calibration.temperature, metrics=metrics)
    return bundle / MODEL_FILE


def calibrate_bundle(model: str | Path, pixels: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> Calibration:
    """Fit the temperature of the bundle at ``model`` on decoded labelled images and store it in ``model.json``.

    The logits come from the bundle's own runtime or an fp32 export (the same
    answers), as predict computes them (flip TTA included when the bundle uses
    it), so T fits what users get; an int8 file is left out (T is the model's).
    """
    from imgclf.deploy.classifier import Classifier  # loads a runtime: only when calibrating

    classifier = Classifier.load(model, batch_size=batch_size, allow_int8=False)  # T fits the model, not an int8 file
    _require_single_label(classifier.info, model)
    logits = np.concatenate([classifier.logits(pixels[start:start + batch_size])
                             for start in range(0, len(pixels), batch_size)]) if len(pixels) else np.zeros((0, 0))
    calibration = calibrate_logits(logits, np.asarray(labels, dtype=np.int64))
    if calibration.kept_one:
        log.warning(calibration.kept_one)
    store_calibration(find_bundle(model), calibration)
    return calibration


def calibrate_run(model: str | Path, data: str | Path | None = None, split: str = "val",
                  batch_size: int = 64) -> Calibration:
    """``imgclf calibrate``: fit T on the run's validation split (or ``split`` of ``data``) and store it."""
    from imgclf.data.sources import load_source, read_manifest
    from imgclf.deploy.predict import decoded_batches

    bundle = find_bundle(model)
    info = read_bundle_info(bundle)
    _require_single_label(info, model)
    if data is None:
        manifest = bundle.parent / "split.csv"
        if not manifest.is_file():
            raise ImgclfError(f"{model} is a bundle without its run's split.csv; give labelled validation images "
                              "with --data")
        dataset = read_manifest(manifest)
    else:
        dataset = load_source(data)
    items = dataset.split_items(split)
    if not items:
        raise ImgclfError(f"--split {split}: {dataset.source} has no images in that split; it has "
                          f"{', '.join(dataset.splits)}. Calibrate on held-out images the model did not train on")
    index = {name: position for position, name in enumerate(info.classes)}
    unknown = sorted({item.label for item in items} - set(index))
    if unknown:
        raise ImgclfError(f"labels the model does not know: {', '.join(unknown[:5])}; calibrate on images of its "
                          f"classes ({', '.join(info.classes[:10])})")
    size = (info.image_size, info.image_size)
    kept, labels = [], []
    offset = 0
    for chunk, pixels, errors in decoded_batches([item.path for item in items], size, info.resize,
                                                 info.channels == 1, batch_size):
        good = [position for position, error in enumerate(errors) if not error]  # broken images are skipped
        kept.append(pixels[good])
        labels += [index[items[offset + position].label] for position in good]
        offset += len(chunk)
    return calibrate_bundle(bundle, np.concatenate(kept), np.array(labels, dtype=np.int64), batch_size)


def _require_single_label(info: BundleInfo, model: str | Path) -> None:
    if info.multilabel:
        raise ImgclfError(f"{model} is a multi-label model; temperature scaling calibrates single-label (softmax) "
                          "models only")
