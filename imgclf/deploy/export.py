"""``imgclf export``: a bundle as ONNX, TorchScript, SavedModel or TFLite, with proof that it still gives the same answers.

An export is written to a temporary file, run beside the original model on
sample images (the run's own held-out images where there are any, plus
random ones that keep the probabilities away from 0 and 1), and only renamed
into place when the largest probability difference is within the tolerance;
otherwise nothing is left behind and the error says by how much it missed.
It is checked at batch 1 and at a larger batch, which proves the batch
dimension is dynamic. A metadata JSON beside the file records how to
preprocess (resize policy, size, mean, std), the classes, the parity and the
measured speed, and the sha256 of the weights it came from so that a
retrained bundle never runs a stale export.

Exporters are looked up by (bundle backend, format): a torch bundle exports
to ONNX and TorchScript, a Keras bundle to SavedModel, TFLite and ONNX
(:mod:`imgclf.deploy.keras_export`). The original is run in its own
framework (PyTorch fp32, or Keras) for the parity check.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.backends import backend_record
from imgclf.deploy import keras_export
from imgclf.deploy.bundle import ENSEMBLE, BundleInfo, find_bundle, read_bundle_info
from imgclf.deploy.classifier import Classifier, EnsembleClassifier, probabilities_from_logits
from imgclf.deploy.keras_runtime import KerasRuntime
from imgclf.deploy.metadata import ONNX_OPSET, file_bytes, write_metadata
from imgclf.deploy.openvino_runtime import OPENVINO_FILES, load_openvino, write_openvino
from imgclf.deploy.predict import decoded_batches
from imgclf.deploy.quantize import labelled_images, quantize_int8
from imgclf.deploy.runtime import (
    FEATURES_OUTPUT,
    ONNX_FILES,
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    compare_speeds,
    has_head_api,
    load_runtime,
    native_of,
)
from imgclf.deploy.runtime_choice import machine
from imgclf.errors import ImgclfError
from imgclf.files import atomic_path, write_text_atomic
from imgclf.runs import RunDirectory, held_out_items

log = logging.getLogger(__name__)


FORMATS = ("onnx", "torchscript", "savedmodel", "tflite", "openvino")
FILES = {"onnx": ONNX_FILES["onnx"], "torchscript": "model.torchscript.pt", "savedmodel": "model.savedmodel",
         "tflite": "model.tflite", "openvino": OPENVINO_FILES["openvino"]}
TIMED_FORMATS = ("onnx", "tflite", "openvino")  # timed against the native runtime (onnx, openvino: for --runtime auto)
DEFAULT_TOLERANCE = 1e-4  # largest allowed |probability difference|; fp32 exports differ by ~1e-6
PARITY_IMAGES = 16  # held-out images, and as many random ones


@dataclass
class Parity:
    """How closely the exported model reproduces the original on the same images."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    batch_sizes: list[int]
    source: str


@dataclass
class ExportResult:
    """What ``export`` wrote and measured."""

    format: str
    path: Path
    metadata: Path
    parity: Parity
    speed: dict[str, dict[str, float]] = field(default_factory=dict)
    quantization: Any = None  # a QuantizationReport with --quantize int8
    bytes: int = 0  # the file's size; a SavedModel folder's, all its files


# ------------------------------------------------------------------ exporters
def _example(info: BundleInfo) -> Any:
    import torch

    return torch.zeros(2, info.channels, info.image_size, info.image_size)


def _torch_to_onnx(model: Any, info: BundleInfo, path: Path) -> None:
    """The TorchScript-based exporter (``dynamo=False``): one pass, no onnxscript, exact for conv nets.

    A model with the head API gets a second output, ``features`` (the pooled
    features feeding the last layer), so ``--runtime onnx`` logs embeddings
    from the same pass too (``serve --log``).
    """
    import torch

    example = _example(info)
    outputs = ["logits", FEATURES_OUTPUT] if has_head_api(model) else ["logits"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings; parity is the real check
        torch.onnx.export(_with_features(model) if len(outputs) == 2 else model, (example,), str(path), dynamo=False,
                          input_names=["input"], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]}, opset_version=ONNX_OPSET)


def _with_features(model: Any) -> Any:
    """``model`` as a module answering (logits, pooled features) from one pass: what the ONNX file records."""
    import torch

    class LogitsAndFeatures(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = self.inner.forward_head(self.inner.forward_features(images), pre_logits=True)
            return self.inner.get_classifier()(pooled), pooled

    return LogitsAndFeatures(model).eval()


def _torch_to_torchscript(model: Any, info: BundleInfo, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, _example(info)).save(str(path))


def _load_onnx(path: Path, info: BundleInfo) -> Runtime:
    return OnnxRuntime(path, info)


def _load_torchscript(path: Path, info: BundleInfo) -> Runtime:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream but still what many stacks load
        model = torch.jit.load(str(path), map_location="cpu")
    return TorchRuntime(model, info, device="cpu", precision="fp32")


# (write(model, info, path), load(path, info)) per native runtime and format; which formats a backend
# offers is its record's (imgclf.backends)
Exporter = tuple[Callable[[Any, BundleInfo, Path], None], Callable[[Path, BundleInfo], Runtime]]
EXPORTERS: dict[str, dict[str, Exporter]] = {
    "torch": {"onnx": (_torch_to_onnx, _load_onnx), "torchscript": (_torch_to_torchscript, _load_torchscript),
              "openvino": (write_openvino, load_openvino)},
    "keras": {"savedmodel": (keras_export.write_savedmodel, keras_export.load_savedmodel),
                   "tflite": (keras_export.write_tflite, keras_export.load_tflite),
                   "onnx": (keras_export.write_onnx, _load_onnx)},
}


# ------------------------------------------------------------------ export
def export(model: str | Path, format: str = "onnx", *, out: str | Path | None = None, quantize: str | None = None,
           data: str | Path | None = None, tolerance: float = DEFAULT_TOLERANCE,
           max_accuracy_drop: float = 0.02) -> ExportResult:
    """Export the bundle at ``model`` (a run or bundle folder) and prove parity; see the module docstring.

    ``out`` is a folder (default: the bundle's own, where ``--runtime onnx``
    finds it). ``quantize="int8"`` also writes ``model.int8.onnx`` (see
    :mod:`imgclf.deploy.quantize`), calibrated and checked on ``data`` (default:
    the run's split.csv).
    """
    directory = find_bundle(model)
    info = read_bundle_info(directory)
    if info.kind == ENSEMBLE:
        return export_ensemble(directory, info, format, quantize=quantize, data=data, tolerance=tolerance,
                               max_accuracy_drop=max_accuracy_drop)
    if format not in FORMATS:
        raise ImgclfError(f"--format {format} is not known; choose one of {', '.join(FORMATS)}")
    record = backend_record(info.backend)
    available = {name: EXPORTERS[record.runtime][name] for name in record.export_formats}
    if format not in available:
        raise ImgclfError(f"--format {format} cannot export {directory}, a {info.backend} model; "
                          f"choose {' or '.join(available) or 'another format'} (savedmodel and tflite are for Keras "
                          "models, torchscript for PyTorch ones)")
    if quantize not in (None, "int8"):
        raise ImgclfError(f"--quantize {quantize} is not supported; use --quantize int8")
    if quantize and format not in record.quantisers:
        fix = (f"add --format {record.quantisers[0]}" if record.quantisers
               else f"a {info.backend} model has no int8 export; drop --quantize")
        raise ImgclfError(f"--quantize int8 works on ONNX, TFLite and OpenVINO exports, not {format}; {fix}")
    if tolerance <= 0:
        raise ImgclfError(f"--tolerance must be positive, got {tolerance}")
    out_dir = Path(out) if out is not None else directory
    if out_dir.exists() and not out_dir.is_dir():
        raise ImgclfError(f"--out {out_dir} is a file; give a folder for the exported model")
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    if quantize:  # read the labelled images first: a missing data set should fail before minutes of work
        calibration = labelled_images(directory, info, data)

    write, load = available[format]
    log.info(f"exporting {directory} to {format}, then checking parity" + (" and timing it" if format in TIMED_FORMATS else ""))
    reference = native_runtime(directory, info, exact=True)
    path = out_dir / FILES[format]
    with atomic_path(path) as partial:  # moved into place only once parity holds
        write(reference.model, info, partial)
        exported = load(partial, info)
        parity = check_parity(reference, exported, info, sample_images(directory, info), tolerance, path)
    speed = measure_speed(directory, info, exported) if format in TIMED_FORMATS else {}
    size = file_bytes(path)
    # --runtime auto trusts these speeds only on the machine that measured them
    measured_on = {"measured_on": machine()} if speed else {}
    meta = write_metadata(path, format, directory, info, bytes=size, parity=asdict(parity), speed=speed, **measured_on)
    result = ExportResult(format, path, meta, parity, speed, bytes=size)
    if calibration is not None:
        log.info(f"quantising to int8: calibrating on {len(calibration.calibration)} images, "
                 f"then comparing with fp32 on {calibration.source}")
        result.quantization = quantize_int8(path, directory, info, calibration, max_accuracy_drop, format=format,
                                            model=reference.model)
    return result


def export_ensemble(directory: Path, info: BundleInfo, format: str, **options: Any) -> ExportResult:
    """Export every member (in its own folder, parity-checked) and check the ensemble's parity on the files.

    The result is a documented set, not one graph: ``members/*/model.onnx``
    (each with its ``.json``) and ``ensemble.onnx.json`` listing them with
    their weights; ``--runtime onnx`` loads the set.
    """
    if format != "onnx":
        raise ImgclfError(f"--format {format}: an ensemble exports as a set of ONNX files, one per member; use --format onnx")
    results = [export(directory / member["path"], "onnx", **options) for member in info.members]
    samples = sample_images(directory, info)[0]
    weights = [member["weight"] for member in info.members]
    native = EnsembleClassifier([Classifier.load(directory / member["path"], precision="fp32",
                                                 runtime=native_of(member["backend"])) for member in info.members],
                                weights, info)
    exported = Classifier.load(directory, runtime="onnx")
    expected, batched = native.predict_pixels(samples), exported.predict_pixels(samples)
    single = exported.predict_pixels(samples[:1])
    diff = float(max(np.abs(expected - batched).max(), np.abs(expected[:1] - single).max()))
    parity = Parity(len(samples), diff, float(np.mean(expected.argmax(1) == batched.argmax(1))), [1, len(samples)],
                    f"{len(samples)} images through every member")
    if not diff <= options.get("tolerance", DEFAULT_TOLERANCE):
        raise ImgclfError(f"the exported ensemble differs from the original by up to {diff:.2e} in probability; "
                          "the member files were written but the set is not consistent: export again")
    meta = directory / "ensemble.onnx.json"
    write_text_atomic(meta, json.dumps({
        "format": "onnx-set", "classes": info.classes, "combine": "sum of weight * softmax(logits / temperature)",
        "members": [{"file": f"{member['path']}/model.onnx", "metadata": f"{member['path']}/model.onnx.json",
                     "weight": member["weight"]} for member in info.members],
        "parity": asdict(parity)}, indent=2))
    return ExportResult("onnx", directory, meta, parity, bytes=sum(result.bytes for result in results))


def native_runtime(directory: Path, info: BundleInfo, exact: bool = False) -> TorchRuntime | KerasRuntime:
    """The bundle in its own framework: Keras, or PyTorch (fp32 on the CPU when ``exact``, else as predict runs it)."""
    if exact:
        runtime = load_runtime(directory, info, native_of(info.backend, directory), device="cpu", precision="fp32")
    else:
        runtime = load_runtime(directory, info, native_of(info.backend, directory))
    assert isinstance(runtime, (TorchRuntime, KerasRuntime))  # a native runtime name loads the framework's own
    return runtime


def sample_images(directory: Path, info: BundleInfo) -> tuple[np.ndarray, str]:
    """Held-out images of the bundle's run (when it has a split.csv) and random images, decoded (N, H, W, C)."""
    rng = np.random.default_rng(0)
    shape = (info.image_size, info.image_size, info.channels)
    noise = rng.integers(0, 256, (PARITY_IMAGES, *shape), dtype=np.uint8)
    run = RunDirectory(directory.parent)
    if not run.has_split():
        return noise, f"{PARITY_IMAGES} random images"
    held_out = held_out_items(run.read_split())[:PARITY_IMAGES]
    _, pixels, errors = next(decoded_batches([item.path for item in held_out], shape[:2], info.resize,
                                             info.channels == 1, len(held_out), workers=1))
    real = pixels[[index for index, error in enumerate(errors) if not error]]
    return np.concatenate([real, noise]), f"{len(real)} held-out images of the run and {PARITY_IMAGES} random images"


def check_parity(reference: Runtime, exported: Runtime, info: BundleInfo, samples: tuple[np.ndarray, str],
                 tolerance: float, path: Path) -> Parity:
    """Compare probabilities at batch 1 and at the full batch; raise beyond ``tolerance``."""
    pixels, source = samples
    expected = probabilities_from_logits(reference.logits(pixels), info.multilabel)
    batched = probabilities_from_logits(exported.logits(pixels), info.multilabel)
    single = probabilities_from_logits(exported.logits(pixels[:1]), info.multilabel)
    diff = float(max(np.abs(expected - batched).max(), np.abs(expected[:1] - single).max()))
    agreement = float(np.mean(expected.argmax(axis=1) == batched.argmax(axis=1)))
    if not diff <= tolerance:  # also catches NaN
        raise ImgclfError(f"{path.name}: the exported model differs from the original by up to {diff:.2e} in "
                          f"probability (tolerance {tolerance:.0e}, top-1 agreement {agreement:.1%}); nothing was "
                          "written. Report this with the model's architecture, or raise --tolerance if you accept it")
    return Parity(len(pixels), diff, agreement, [1, len(pixels)], source)


def measure_speed(directory: Path, info: BundleInfo, exported: Runtime) -> dict[str, Any]:
    """Images/s of the native runtime (PyTorch with predict's device and precision, or Keras) and of the export."""
    native = native_runtime(directory, info)
    details = ({"torch_device": str(native.device), "torch_precision": native.precision}
               if isinstance(native, TorchRuntime) else {})
    return {**details, **compare_speeds({native.name: native, exported.name: exported}, info)}
