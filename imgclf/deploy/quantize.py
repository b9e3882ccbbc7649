"""``--quantize int8``: static int8 quantisation of an ONNX or TFLite export, with its cost in accuracy and its gain in speed.

Static (calibrated) quantisation, not dynamic: a conv net's time is in its
convolutions, which dynamic quantisation leaves in float. ONNX: ONNX
Runtime's QDQ quantisation with per-channel weights turns them into int8
kernels. TFLite (Keras bundles): the TFLite converter's full-integer
post-training quantisation (int8 weights and activations, float input and
output, so the file is fed like the fp32 one). The activation ranges are
calibrated on up to :data:`CALIBRATION_IMAGES` training images; the fp32 and
int8 files are then both run on the validation images and the accuracy
change, top-1 agreement and speed-up are reported. A drop beyond
``max_accuracy_drop`` is refused: the int8 file is not written. The int8
file's speed is recorded in its metadata with the machine that measured it,
as an fp32 export's is, so ``--runtime auto`` can choose it where it is the
fastest (:mod:`imgclf.deploy.runtime_choice`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.sources import Item, label_indices, load_source
from imgclf.deploy.bundle import BundleInfo
from imgclf.deploy.metadata import file_bytes, write_metadata
from imgclf.deploy.openvino_runtime import OPENVINO_FILES, openvino_int8
from imgclf.deploy.predict import decoded_batches
from imgclf.deploy.runtime import FORK_UNSAFE, ONNX_FILES, OnnxRuntime, Runtime, compare_speeds, native_of
from imgclf.deploy.runtime_choice import machine
from imgclf.errors import ImgclfError
from imgclf.files import atomic_path
from imgclf.runs import HELD_OUT, RunDirectory, held_out_items

CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 16
INT8_FILES = {"onnx": ONNX_FILES["onnx-int8"], "tflite": "model.int8.tflite", "openvino": OPENVINO_FILES["openvino-int8"]}


@dataclass
class LabelledImages:
    """Images to calibrate on and images (with class indices) to measure accuracy on."""

    calibration: list[Path]
    validation: list[Path]
    labels: np.ndarray
    source: str


@dataclass
class QuantizationReport:
    """fp32 against int8 on the validation images."""

    path: Path
    images: int
    source: str
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_change: float
    top1_agreement: float
    max_abs_diff: float
    fp32_speed: dict[str, float]
    int8_speed: dict[str, float]
    speedup: dict[str, float]
    fp32_bytes: int
    int8_bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # images that could not be decoded, and why


def labelled_images(directory: Path, info: BundleInfo, data: str | Path | None) -> LabelledImages:
    """Calibration images from the train split, validation images from val (else test, else all)."""
    if info.multilabel:  # the int8 check compares top-1 accuracy, which says nothing about a label set
        raise ImgclfError(f"--quantize int8 is checked by single-label accuracy; {directory} is a multi-label model: "
                          "export it without --quantize (float exports keep parity)")
    run = RunDirectory(directory.parent)
    if data is not None:
        dataset = load_source(data)
    elif run.has_split():
        dataset = run.read_split()
    else:
        raise ImgclfError(f"--quantize int8 needs labelled images to calibrate on and to measure accuracy; {directory} "
                          "has no run split.csv beside it, so add --data DATA")
    validation = held_out_items(dataset, order=tuple(reversed(HELD_OUT)))
    training = dataset.split_items("train") or validation
    unknown = sorted({item.label for item in validation} - set(info.classes))
    if unknown:
        raise ImgclfError(f"--data {dataset.source}: labels the model does not know: {', '.join(unknown[:5])}")
    order = np.random.default_rng(0).permutation(len(training))[:CALIBRATION_IMAGES]
    return LabelledImages(calibration=[training[i].path for i in sorted(order)],
                          validation=[item.path for item in validation],
                          labels=label_indices(validation, info.classes),
                          source=_describe(dataset.source, validation))


def _describe(source: str, items: list[Item]) -> str:
    split = items[0].split if items and items[0].split else "all"
    return f"{len(items)} {split} images of {source}"


def _workers(info: BundleInfo) -> int | None:
    """Decoding processes: none beside this one once TensorFlow runs here.

    The decoder forks its workers; a fork taken after TensorFlow / TFLite
    started their thread pools can inherit a held lock and hang for ever
    (seen with a TFLite export of the flowers model), so a Keras bundle's
    images are decoded in this process.
    """
    return 1 if native_of(info.backend) in FORK_UNSAFE else None


def _decoded(paths: list[Path], info: BundleInfo) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The decodable images of ``paths`` (N, H, W, C), and the (path, reason) of the others."""
    size = (info.image_size, info.image_size)
    batches = decoded_batches(paths, size, info.resize, info.channels == 1, 64, _workers(info))
    kept, skipped = [], []
    for chunk, pixels, errors in batches:
        kept.append(pixels[[not error for error in errors]])
        skipped += [(str(path), error) for path, error in zip(chunk, errors) if error]
    return np.concatenate(kept), skipped


def quantize_int8(fp32_path: Path, directory: Path, info: BundleInfo, images: LabelledImages,
                  max_accuracy_drop: float, format: str = "onnx", model: Any = None) -> QuantizationReport:
    """Write the int8 file (``model.int8.onnx`` / ``.tflite``) beside ``fp32_path``, with metadata; report its cost and gain.

    ``model`` is the Keras model, which the TFLite converter quantises from.
    """
    calibration, skipped = _decoded(images.calibration, info)
    if not len(calibration):
        raise ImgclfError(f"none of the calibration images ({images.source}) could be decoded")
    path = fp32_path.with_name(INT8_FILES[format])
    with atomic_path(path) as partial:  # kept only when the accuracy check passes
        fp32, int8 = QUANTISERS[format](fp32_path, partial, info, calibration, model)
        report = _compare(fp32, int8, info, images, path, fp32_path)
        report.skipped = skipped + report.skipped
        if report.accuracy_change < -max_accuracy_drop:
            raise ImgclfError(f"int8 quantisation loses {-report.accuracy_change:.1%} accuracy on {report.source} "
                              f"({report.fp32_accuracy:.1%} -> {report.int8_accuracy:.1%}), more than "
                              f"--max-accuracy-drop {max_accuracy_drop:g}; {path.name} was not written "
                              f"({fp32_path.name} was)")
    report.int8_bytes = file_bytes(path)
    summary = {key: value for key, value in asdict(report).items() if key != "path"}
    # as export records an fp32 file's: --runtime auto trusts the speed only on the machine that measured it
    write_metadata(path, format, directory, info, quantization=summary, speed={int8.name: report.int8_speed},
                   measured_on=machine())
    return report


def _onnx_int8(fp32_path: Path, partial: Path, info: BundleInfo, calibration: np.ndarray,
               model: Any) -> tuple[Runtime, Runtime]:
    """ONNX Runtime's static QDQ quantisation (per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = OnnxRuntime(fp32_path, info)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {"input": fp32.normalise(calibration[start:start + CALIBRATION_BATCH])}

    prepared = partial.with_name(f".{partial.stem}.pre-{os.getpid()}.onnx")
    logging.disable(logging.WARNING)  # the quantiser logs per-tensor notes that mean nothing to a user
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(partial), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
        prepared.unlink(missing_ok=True)
    return fp32, OnnxRuntime(partial, info, name="onnx-int8")


def _tflite_int8(fp32_path: Path, partial: Path, info: BundleInfo, calibration: np.ndarray,
                 model: Any) -> tuple[Runtime, Runtime]:
    from imgclf.deploy.keras_export import TfliteRuntime, write_tflite_int8

    write_tflite_int8(model, info, partial, calibration)
    return TfliteRuntime(fp32_path, info), TfliteRuntime(partial, info, name="tflite-int8")


QuantiseFn = Callable[[Path, Path, BundleInfo, np.ndarray, Any], tuple[Runtime, Runtime]]
QUANTISERS: dict[str, QuantiseFn] = {"onnx": _onnx_int8, "tflite": _tflite_int8, "openvino": openvino_int8}


def _compare(fp32: Runtime, int8: Runtime, info: BundleInfo, images: LabelledImages, path: Path,
             fp32_path: Path) -> QuantizationReport:
    from imgclf.console import progress_bar
    from imgclf.deploy.classifier import probabilities_from_logits

    size = (info.image_size, info.image_size)
    before, after, labels = [], [], []
    with progress_bar() as bar:
        task = bar.add_task("fp32 vs int8", total=len(images.validation))
        batches = decoded_batches(images.validation, size, info.resize, info.channels == 1, 64,
                                  _workers(info))
        skipped = []
        for start, (chunk, pixels, errors) in zip(range(0, len(images.validation), 64), batches):
            ok = np.array([not error for error in errors])
            skipped += [(str(path), error) for path, error in zip(chunk, errors) if error]
            before.append(probabilities_from_logits(fp32.logits(pixels[ok]), info.multilabel))
            after.append(probabilities_from_logits(int8.logits(pixels[ok]), info.multilabel))
            labels.append(images.labels[start:start + len(chunk)][ok])
            bar.advance(task, len(chunk))
    first, second, truth = np.concatenate(before), np.concatenate(after), np.concatenate(labels)
    if not len(truth):
        raise ImgclfError(f"none of the validation images ({images.source}) could be decoded")
    fp32_accuracy = float(np.mean(first.argmax(axis=1) == truth))
    int8_accuracy = float(np.mean(second.argmax(axis=1) == truth))
    speeds = compare_speeds({"fp32": fp32, "int8": int8}, info)
    fp32_speed, int8_speed = speeds["fp32"], speeds["int8"]
    return QuantizationReport(
        path=path, images=len(truth), source=images.source, fp32_accuracy=fp32_accuracy, int8_accuracy=int8_accuracy,
        accuracy_change=int8_accuracy - fp32_accuracy,
        top1_agreement=float(np.mean(first.argmax(axis=1) == second.argmax(axis=1))),
        max_abs_diff=float(np.abs(first - second).max()), fp32_speed=fp32_speed, int8_speed=int8_speed,
        speedup={batch: round(int8_speed[batch] / fp32_speed[batch], 2) for batch in fp32_speed},
        fp32_bytes=file_bytes(fp32_path), int8_bytes=0, skipped=skipped)
