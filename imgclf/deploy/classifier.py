"""A trained model ready to classify images: loaded from a bundle, preprocessing included.

>>> clf = imgclf.load("runs/shop")              # doctest: +SKIP
>>> clf.predict("new/cat.jpg")                   # doctest: +SKIP
[('cat', 0.91), ('dog', 0.07), ...]

Preprocessing is exactly training's: the same decoder, resize policy, size
and normalisation, all read from ``model.json``. So is the output: the
logits are divided by the bundle's calibration temperature before the
softmax, whatever the runtime (see :mod:`imgclf.deploy.calibration`), and
the label each image gets is decided here, once (:meth:`Classifier.decide`:
a binary model's threshold, see :mod:`imgclf.deploy.decision`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from imgclf.backends import backend_record
from imgclf.data.decode import decode_file, fit, to_channels
from imgclf.data.hierarchy import label_tree
from imgclf.data.views import zoomed
from imgclf.deploy.bundle import ENSEMBLE, BundleInfo, find_bundle, read_bundle_info
from imgclf.deploy.explain import Explanation, KerasGradCam, TorchGradCam
from imgclf.deploy.predict import PredictionRow, decoded_batches
from imgclf.deploy.runtime import Runtime, load_runtime, native_of, resolve_runtime
from imgclf.errors import ImgclfError

ImageInput = Union[str, Path, Image.Image, np.ndarray]
Prediction = list[tuple[str, float]]
Outputs = tuple[np.ndarray, Union[np.ndarray, None]]  # (logits, pooled features or None) of a batch


@dataclass
class PixelOutputs:
    """A batch's probabilities and pooled features (None where the runtime has none); rows slice both alike."""

    probabilities: np.ndarray
    features: np.ndarray | None

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, rows: slice) -> PixelOutputs:
        return PixelOutputs(self.probabilities[rows], None if self.features is None else self.features[rows])


class Classifier:
    """Classes, preprocessing and a runtime (PyTorch, Keras or ONNX Runtime) for one trained model."""

    def __init__(self, runtime: Runtime, info: BundleInfo, tta: bool | None = None,
                 directory: Path | None = None) -> None:
        self.info = info
        self.classes = list(info.classes)
        self.runtime = runtime
        self.tta = info.tta if tta is None else tta
        self.directory = directory  # the bundle folder: what explain() rebuilds a differentiable model from
        self._explainer: Any = None
        self.hierarchy = None if info.multilabel else label_tree(self.classes)  # path labels: a level per depth

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", precision: str = "auto", tta: bool | None = None,
             runtime: str = "auto", batch_size: int = 64, allow_int8: bool = True) -> Classifier:
        """Load a bundle folder or a run directory (its ``model/``).

        ``runtime`` is the bundle's own framework (``torch``, or ``keras`` for a
        tensorflow bundle), an export in the bundle (``onnx``, ``onnx-int8``,
        ``openvino``, ``openvino-int8``) or ``auto``: the fastest at
        ``batch_size`` as measured on this machine, int8 exports included
        unless ``allow_int8`` is False (what measures the model itself: its
        answers must be the model's, see :mod:`imgclf.deploy.runtime_choice`).
        """
        directory = find_bundle(path)
        info = read_bundle_info(directory)
        if info.kind == ENSEMBLE:
            return EnsembleClassifier.load_members(directory, info, device=device, precision=precision, tta=tta,
                                                   runtime=runtime, batch_size=batch_size, allow_int8=allow_int8)
        chosen = resolve_runtime(directory, runtime, device=device, batch_size=batch_size,
                                 native=native_of(info.backend, directory), allow_int8=allow_int8)
        return cls(load_runtime(directory, info, chosen, device=device, precision=precision), info, tta=tta,
                   directory=directory)

    # ----------------------------------------------------------------- input
    def _pixels(self, image: ImageInput) -> np.ndarray:
        size = (self.info.image_size, self.info.image_size)
        grayscale = self.info.channels == 1
        if isinstance(image, (str, Path)):
            decoded = decode_file(Path(image), size, policy=self.info.resize, grayscale=grayscale)
            if decoded.pixels is None:
                raise ImgclfError(f"{image}: {decoded.error}")
            return decoded.pixels
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ImgclfError(f"arrays must be uint8 (H, W) or (H, W, C) images, got {image.dtype} {image.shape}")
            image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        if not isinstance(image, Image.Image):
            raise ImgclfError(f"cannot classify a {type(image).__name__}; give a path, a PIL image or a uint8 array")
        pixels = np.asarray(fit(to_channels(image, grayscale), size, self.info.resize), dtype=np.uint8)
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

    # ----------------------------------------------------------------- output
    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, classes) raw logits (averaged over TTA's views, before temperature) for decoded uint8 images.

        TTA (airbench's): the image and its mirror; with the bundle's
        ``tta_zoom``, the zoomed centre crop and its mirror too, weighted as
        the first pair (the views the photo recipe trained on,
        :mod:`imgclf.data.views`); with ``tta_shift``, half the weight goes
        to the mirror pairs of the image shifted by that many pixels up-left
        and down-right, borders reflected.
        """
        return self._viewed(pixels, lambda view: (self.runtime.logits(view), None))[0]

    def logits_and_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`logits` and the (N, D) pooled features of the same forward passes (TTA's views weighted alike).

        The features are None where the runtime cannot give them (OpenVINO,
        Keras, and ONNX files exported before the log: an exported graph whose
        only output is the logits).
        """
        if not self.gives_features:
            return self.logits(pixels), None
        return self._viewed(pixels, self.runtime.logits_and_features)  # type: ignore[attr-defined]  # gives_features

    @property
    def gives_features(self) -> bool:
        """Whether this runtime gives the pooled features with the logits (PyTorch; ONNX exports made since the log)."""
        return bool(getattr(self.runtime, "gives_features", False))

    def _viewed(self, pixels: np.ndarray, run: Callable[[np.ndarray], Outputs]) -> Outputs:
        """``run``'s (logits, features) over TTA's views, weighted as :meth:`logits` says."""
        if not self.tta:
            return run(pixels)
        outputs = _mirrored(run, pixels)
        if self.info.tta_zoom:
            outputs = _weighted([(0.5, outputs), (0.5, _mirrored(run, zoomed(pixels, self.info.tta_zoom)))])
        shift = self.info.tta_shift
        if shift:
            height, width = pixels.shape[1:3]
            padded = np.pad(pixels, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
            shifted = [padded[:, :height, :width], padded[:, 2 * shift:2 * shift + height, 2 * shift:2 * shift + width]]
            pairs = _weighted([(1.0, _mirrored(run, np.ascontiguousarray(view))) for view in shifted])
            outputs = _weighted([(0.5, outputs), (0.25, pairs)])
        return outputs

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities for decoded uint8 images (N, H, W, C) at the model's input size."""
        if not len(pixels):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.probabilities_of(self.logits(pixels))

    def predict_pixels_with_features(self, pixels: np.ndarray) -> PixelOutputs:
        """:meth:`predict_pixels` and the pooled features of the same forward pass (None where the runtime has none).

        What the prediction log records with each answer: the embedding costs
        no second pass through the model.
        """
        if not len(pixels):
            return PixelOutputs(np.zeros((0, len(self.classes)), dtype=np.float32), None)
        logits, features = self.logits_and_features(pixels)
        return PixelOutputs(self.probabilities_of(logits), features)

    def rows_logits(self, pixels: np.ndarray, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(len(rows), classes) raw logits (TTA included, before temperature) of rows of a decoded array, in batches."""
        chunks = [self.logits(np.asarray(pixels[rows[start:start + batch_size]]))
                  for start in range(0, len(rows), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def rows_logits_and_features(self, pixels: np.ndarray, rows: np.ndarray,
                                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`rows_logits` and the pooled features of the same passes (None where the runtime has none)."""
        if not self.gives_features or not len(rows):
            return self.rows_logits(pixels, rows, batch_size), None
        chunks = [self.logits_and_features(np.asarray(pixels[rows[start:start + batch_size]]))
                  for start in range(0, len(rows), batch_size)]
        return np.concatenate([logits for logits, _ in chunks]), np.concatenate([features for _, features in chunks])

    def probabilities_of(self, logits: np.ndarray) -> np.ndarray:
        """What :meth:`predict_pixels` gives for these raw logits: the bundle's temperature, then softmax/sigmoid."""
        return probabilities_from_logits(np.asarray(logits) / self.info.temperature, self.info.multilabel)

    def score_logits(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Plain loss (no smoothing, no class weights) and accuracy of raw logits from :meth:`rows_logits`.

        Training's final scores come from here rather than from the training
        loop's model, so the summary and ``model.json`` give exactly the
        number ``imgclf evaluate`` gives for the same images: the same
        runtime, precision and TTA; training passes the validation images
        through the bundle once and calibrates, decides and scores on those
        logits. ``targets`` are class indices, or 0/1 rows for a multi-label
        model (accuracy is then an exact match).
        """
        probabilities = self.probabilities_of(logits)
        eps = np.finfo(probabilities.dtype).eps  # as scikit-learn's log_loss (evaluate's) clips
        clipped = np.clip(probabilities.astype(np.float64), eps, 1.0 - eps)
        if self.info.multilabel:
            loss = -np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped))
            correct = (self.label_decisions(probabilities) == (targets > 0.5)).all(axis=1)
        else:
            loss = -np.mean(np.log(clipped[np.arange(len(targets)), targets]))
            correct = self.decide(probabilities) == targets
        return {"loss": float(loss), "accuracy": float(np.mean(correct))}

    def predict_proba(self, images: Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        """(N, classes) probabilities: softmax, or independent sigmoids for a multi-label model."""
        outputs = [self.predict_pixels(np.stack([self._pixels(image) for image in images[start:start + batch_size]]))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), dtype=np.float32)

    # ----------------------------------------------------------------- multi-label decisions
    def label_thresholds(self) -> np.ndarray:
        """(classes,) where a multi-label model says each label: the bundle's tuned thresholds, else 0.5."""
        return np.array([self.info.thresholds.get(name, 0.5) for name in self.classes], dtype=np.float64)

    def label_decisions(self, probabilities: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
        """(N, classes) booleans of a multi-label model: a label is said when its probability reaches its threshold.

        ``min_confidence`` is a floor on every label's bar (``--min-confidence``
        means per label here): it can make the model say less, never more.
        """
        return np.asarray(probabilities) >= np.maximum(self.label_thresholds(), min_confidence)[None, :]

    def chosen_labels(self, probabilities: np.ndarray, min_confidence: float = 0.0) -> list[str]:
        """The labels one (classes,) probability row says, most probable first (an empty list is an answer)."""
        said = self.label_decisions(probabilities[None, :], min_confidence)[0]
        return [self.classes[i] for i in np.argsort(-probabilities, kind="stable") if said[i]]

    def predict_files(self, paths: Sequence[Path], *, top_k: int = 5, min_confidence: float = 0.0,
                      batch_size: int = 64, workers: int | None = None, features: bool = False
                      ) -> Iterator[PredictionRow]:
        """One :class:`PredictionRow` per path, in order, streamed; unreadable files give error rows.

        With ``features``, each row also carries the pooled features of the
        forward pass that answered it (``predict --log``'s embedding).
        """
        k = max(1, min(top_k, len(self.classes)))
        for path, outputs, error in self.file_outputs(paths, batch_size, workers, features):
            if outputs is None:
                yield PredictionRow(str(path), error=error)
                continue
            row = outputs.probabilities[0]
            order = self.ranking(row[None])[0, :k]
            labels = self.chosen_labels(row, min_confidence) if self.info.multilabel else None
            yield PredictionRow(str(path), top=[(self.classes[i], float(row[i])) for i in order],
                                probabilities=row, min_confidence=min_confidence, labels=labels,
                                levels=self.hierarchy.levels(row) if self.hierarchy else [],
                                features=None if outputs.features is None else outputs.features[0])

    def file_probabilities(self, paths: Sequence[Path], batch_size: int = 64, workers: int | None = None
                           ) -> Iterator[tuple[Path, np.ndarray | None, str]]:
        """(path, probabilities or None, error) per path, in order, decoded ahead by worker processes."""
        for path, outputs, error in self.file_outputs(paths, batch_size, workers):
            yield path, None if outputs is None else outputs.probabilities[0], error

    def file_outputs(self, paths: Sequence[Path], batch_size: int = 64, workers: int | None = None,
                     features: bool = False) -> Iterator[tuple[Path, PixelOutputs | None, str]]:
        """(path, its one-row outputs or None, error) per path, in order; the features only when asked for."""
        size = (self.info.image_size, self.info.image_size)
        run = self.predict_pixels_with_features if features else (
            lambda pixels: PixelOutputs(self.predict_pixels(pixels), None))
        for chunk, pixels, errors in decoded_batches(list(paths), size, self.info.resize,
                                                     self.info.channels == 1, batch_size, workers):
            good = [index for index, error in enumerate(errors) if not error]
            outputs, taken = run(pixels[good]), 0
            for path, error in zip(chunk, errors):
                yield path, None if error else outputs[taken:taken + 1], error
                taken += 0 if error else 1

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int | None = None
                ) -> Prediction | list[Prediction]:
        """(class, probability) pairs, the decided class first; a list of them when given a list of images."""
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            single, batch = True, [images]
        else:
            single, batch = False, list(images)
        probabilities = self.predict_proba(batch)
        k = len(self.classes) if top_k is None else max(1, min(top_k, len(self.classes)))
        ranked = [[(self.classes[i], float(row[i])) for i in order[:k]]
                  for row, order in zip(probabilities, self.ranking(probabilities))]
        return ranked[0] if single else ranked

    # ----------------------------------------------------------------- decisions (binary: positive at a threshold)
    @property
    def decision(self) -> tuple[int, float] | None:
        """(positive class index, threshold) of a two-class single-label model; None for every other model.

        Bundles written before thresholds existed (or without a validation
        split to choose one on) decide at 0.5 for the second class, which
        is the argmax they always used.
        """
        if self.info.multilabel or len(self.classes) != 2:
            return None
        positive = self.info.positive if self.info.positive in self.classes else self.classes[1]
        return self.classes.index(positive), float(self.info.thresholds.get(positive, 0.5))

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """(N,) the class index each row of (N, classes) probabilities is called: the one place labels are decided.

        A binary model with a stored threshold says its positive class when
        P(positive) reaches the threshold, else the other; every other model
        (and a bundle without thresholds) takes the most probable class.
        """
        decision = self.decision
        if decision is None or self.classes[decision[0]] not in self.info.thresholds:
            return np.asarray(probabilities).argmax(axis=1)
        positive, threshold = decision
        return np.where(np.asarray(probabilities)[:, positive] >= threshold, positive, 1 - positive)

    def ranking(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, classes) class indices per row: the decided class first, then the others by probability.

        Every output lists classes in this order (predict's table, CSV and
        JSON ``top_k``, serve), so the first class is always the decision
        and ``--top-k 1`` or ``--min-confidence`` act on it.
        """
        probabilities = np.asarray(probabilities)
        not_decided = np.arange(probabilities.shape[1])[None, :] != self.decide(probabilities)[:, None]
        return np.lexsort((-probabilities, not_decided), axis=-1)

    def explain(self, image: ImageInput, top_k: int = 3) -> Explanation:
        """Grad-CAM heat maps of ``image`` for its ``top_k`` classes: ``.map`` is the top class's (H, W) array."""
        if self._explainer is None:
            self._explainer = self._make_explainer()
        pixels = self._pixels(image)
        probabilities = self.predict_pixels(pixels[None])[0]
        order = [int(i) for i in self.ranking(probabilities[None])[0, :max(1, min(top_k, len(self.classes)))]]
        return Explanation(pixels=pixels, top=[(self.classes[i], float(probabilities[i])) for i in order],
                           maps=self._explainer.maps(pixels, order), layer=self._explainer.layer_name)

    def _make_explainer(self) -> TorchGradCam | KerasGradCam:
        if self.directory is None:
            raise ImgclfError("this classifier was not loaded from a bundle; load it with imgclf.load(...) to explain")
        if backend_record(self.info.backend).explainer == "keras":
            from imgclf.deploy.keras_runtime import KerasRuntime

            keras_runtime = self.runtime if isinstance(self.runtime, KerasRuntime) else KerasRuntime.load(
                self.directory, self.info)
            return KerasGradCam(keras_runtime.model, self.info)
        return TorchGradCam(self.directory, self.info)


class EnsembleClassifier(Classifier):
    """Soft voting: the weighted mean of member classifiers' (calibrated) probabilities, one model to its users.

    Members may differ in architecture, input size, resize policy and
    backend: files are decoded by each member with its own preprocessing.
    Already decoded pixels (``predict_pixels``, what ``serve`` sends) are at
    the largest member's size and squashed to each smaller member's.
    """

    def __init__(self, members: list[Classifier], weights: Sequence[float] | np.ndarray, info: BundleInfo,
                 directory: Path | None = None) -> None:
        super().__init__(_EnsembleRuntime(members), info, tta=False,  # type: ignore[arg-type]  # names the members' runtimes; they run the model
                         directory=directory)
        self.members = members
        self.weights = np.asarray(weights, dtype=np.float64)

    @classmethod
    def load_members(cls, directory: Path, info: BundleInfo, **options: Any) -> EnsembleClassifier:
        members = [Classifier.load(directory / member["path"], **options) for member in info.members]
        return cls(members, [member["weight"] for member in info.members], info, directory)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        raise ImgclfError("an ensemble votes with probabilities and has no logits; calibrate its members")

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.combine([member.predict_pixels(_resized(pixels, member.info.image_size)) for member in self.members])

    @property
    def gives_features(self) -> bool:
        return False  # the members embed differently: an ensemble logs no embedding

    def predict_pixels_with_features(self, pixels: np.ndarray) -> PixelOutputs:
        """The vote, without features (see :attr:`gives_features`)."""
        return PixelOutputs(self.predict_pixels(pixels), None)

    def predict_proba(self, images: Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        return self.combine([member.predict_proba(images, batch_size) for member in self.members])

    def file_outputs(self, paths: Sequence[Path], batch_size: int = 64, workers: int | None = None,
                     features: bool = False) -> Iterator[tuple[Path, PixelOutputs | None, str]]:
        """The members' votes per path (never features: the members embed differently)."""
        streams = [member.file_probabilities(paths, batch_size, workers) for member in self.members]
        for rows in zip(*streams):
            path, _, error = rows[0]
            yield path, None if error else PixelOutputs(self.combine([row for _, row, _ in rows])[None], None), error

    def combine(self, probabilities: Sequence[np.ndarray]) -> np.ndarray:
        """The weighted mean of members' (N, classes) probabilities."""
        return np.tensordot(self.weights, np.stack(probabilities), axes=1).astype(np.float32)

    def explain(self, image: ImageInput, top_k: int = 3) -> Explanation:
        raise ImgclfError(f"explain one member of the ensemble instead: "
                          f"{', '.join(member['path'] for member in self.info.members)}")


class _EnsembleRuntime:
    """The runtime name an ensemble reports: its members' runtimes."""

    def __init__(self, members: list[Classifier]) -> None:
        self.name = "ensemble(" + ",".join(member.runtime.name for member in members) + ")"


def _mirrored(run: Callable[[np.ndarray], Outputs], pixels: np.ndarray) -> Outputs:
    """The mean of ``run`` on the images and their mirrors."""
    return _weighted([(0.5, run(pixels)), (0.5, run(pixels[:, :, ::-1]))])


def _weighted(parts: list[tuple[float, Outputs]]) -> Outputs:
    """The weighted sum of (logits, features) pairs; the features are None when any part has none."""
    logits = sum(weight * part[0] for weight, part in parts)
    features = [(weight, part[1]) for weight, part in parts if part[1] is not None]
    if len(features) < len(parts):
        return logits, None  # type: ignore[return-value]  # a sum of arrays is an array
    return logits, sum(weight * item for weight, item in features)  # type: ignore[return-value]  # as above


def _resized(pixels: np.ndarray, side: int) -> np.ndarray:
    """Decoded (N, H, W, C) uint8 images squashed to ``side`` (unchanged when they are that size already)."""
    if pixels.shape[1] == side and pixels.shape[2] == side:
        return pixels
    resized = [np.asarray(Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).resize(
        (side, side), Image.Resampling.BILINEAR)) for image in pixels]
    return np.stack([image[:, :, None] if image.ndim == 2 else image for image in resized])


def probabilities_from_logits(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax over classes, or independent sigmoids for a multi-label model (float32)."""
    logits = logits.astype(np.float32, copy=False)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
