"""``imgclf export``: a bundle as ONNX or TorchScript, with proof that it still gives the same answers.

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

Exporters are looked up by (bundle backend, format): the Keras backend adds
its own entries (``savedmodel``, ``tflite``, ``onnx``) to :data:`EXPORTERS`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import __version__
from imgclf.console import console
from imgclf.data.sources import read_manifest
from imgclf.deploy.bundle import BundleInfo, find_bundle, read_bundle_info
from imgclf.deploy.classifier import probabilities_from_logits
from imgclf.deploy.predict import decoded_batches
from imgclf.deploy.runtime import (
    ONNX_FILES,
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    compare_speeds,
    metadata_path,
    weights_digest,
)
from imgclf.errors import ImgclfError
from imgclf.files import write_text_atomic

FORMATS = ("onnx", "torchscript", "savedmodel", "tflite")
FILES = {"onnx": ONNX_FILES["onnx"], "torchscript": "model.torchscript.pt"}
DEFAULT_TOLERANCE = 1e-4  # largest allowed |probability difference|; fp32 exports differ by ~1e-6
PARITY_IMAGES = 16  # held-out images, and as many random ones
OPSET = 17


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


# ------------------------------------------------------------------ exporters
def _torch_to_onnx(model: Any, example: Any, path: Path) -> None:
    """The TorchScript-based exporter (``dynamo=False``): one pass, no onnxscript, exact for conv nets."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings; parity is the real check
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET)


def _torch_to_torchscript(model: Any, example: Any, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, example).save(str(path))


def _load_onnx(path: Path, info: BundleInfo) -> Runtime:
    return OnnxRuntime(path, info)


def _load_torchscript(path: Path, info: BundleInfo) -> Runtime:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream but still what many stacks load
        model = torch.jit.load(str(path), map_location="cpu")
    return TorchRuntime(model, info, device="cpu", precision="fp32")


Exporter = tuple[Callable[[Any, Any, Path], None], Callable[[Path, BundleInfo], Runtime]]
EXPORTERS: dict[str, dict[str, Exporter]] = {
    "torch": {"onnx": (_torch_to_onnx, _load_onnx), "torchscript": (_torch_to_torchscript, _load_torchscript)},
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
    if format not in FORMATS:
        raise ImgclfError(f"--format {format} is not known; choose one of {', '.join(FORMATS)}")
    available = EXPORTERS.get(info.backend, {})
    if format not in available:
        raise ImgclfError(f"--format {format} cannot export {directory}, a {info.backend} model; "
                          f"choose {' or '.join(available) or 'another format'} (savedmodel and tflite are for Keras models)")
    if quantize not in (None, "int8"):
        raise ImgclfError(f"--quantize {quantize} is not supported; use --quantize int8")
    if quantize and format != "onnx":
        raise ImgclfError("--quantize int8 works on ONNX exports; add --format onnx")
    if tolerance <= 0:
        raise ImgclfError(f"--tolerance must be positive, got {tolerance}")
    out_dir = Path(out) if out is not None else directory
    if out_dir.exists() and not out_dir.is_dir():
        raise ImgclfError(f"--out {out_dir} is a file; give a folder for the exported model")
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    if quantize:  # read the labelled images first: a missing data set should fail before minutes of work
        from imgclf.deploy.quantize import labelled_images

        calibration = labelled_images(directory, info, data)

    write, load = available[format]
    console.print(f"exporting {directory} to {format}, then checking parity" + (" and timing it" if format == "onnx" else ""))
    reference = TorchRuntime.load(directory, info, device="cpu", precision="fp32")
    path = out_dir / FILES[format]
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        import torch

        example = torch.zeros(2, info.channels, info.image_size, info.image_size)
        write(reference.model, example, partial)
        exported = load(partial, info)
        parity = check_parity(reference, exported, info, sample_images(directory, info), tolerance, path)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    speed = measure_speed(directory, info, exported) if format == "onnx" else {}
    meta = write_metadata(path, format, directory, info, parity=asdict(parity), speed=speed)
    result = ExportResult(format, path, meta, parity, speed)
    if calibration is not None:
        from imgclf.deploy.quantize import quantize_int8

        console.print(f"quantising to int8: calibrating on {len(calibration.calibration)} images, "
                      f"then comparing with fp32 on {calibration.source}")
        result.quantization = quantize_int8(path, directory, info, calibration, max_accuracy_drop)
    return result


def sample_images(directory: Path, info: BundleInfo) -> tuple[np.ndarray, str]:
    """Held-out images of the bundle's run (when it has a split.csv) and random images, decoded (N, H, W, C)."""
    rng = np.random.default_rng(0)
    shape = (info.image_size, info.image_size, info.channels)
    noise = rng.integers(0, 256, (PARITY_IMAGES, *shape), dtype=np.uint8)
    manifest = directory.parent / "split.csv"
    if not manifest.is_file():
        return noise, f"{PARITY_IMAGES} random images"
    dataset = read_manifest(manifest)
    held_out = (dataset.split_items("test") or dataset.split_items("val") or dataset.items)[:PARITY_IMAGES]
    _, pixels, errors = next(decoded_batches([item.path for item in held_out], shape[:2], info.resize,  # type: ignore[arg-type]
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
    """Images/s of the default PyTorch runtime (device and precision as predict uses them) and of the export."""
    native = TorchRuntime.load(directory, info)
    return {"torch_device": str(native.device), "torch_precision": native.precision,
            **compare_speeds({"torch": native, exported.name: exported}, info)}


def write_metadata(path: Path, format: str, directory: Path, info: BundleInfo, **extra: Any) -> Path:
    """``<file>.json``: everything a production stack needs to feed the file and read its output."""
    import json

    channels, size = info.channels, info.image_size
    values = {
        "format": format,
        "file": path.name,
        "imgclf_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(directory.resolve()),
        "weights_sha256": weights_digest(directory),
        "architecture": info.architecture,
        "classes": info.classes,
        "multilabel": info.multilabel,
        "input": {"name": "input", "shape": ["batch", channels, size, size], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "shape": ["batch", len(info.classes)],
                   "activation": "sigmoid" if info.multilabel else "softmax"},
        "preprocessing": {
            "decode": "8-bit RGB" if channels == 3 else "8-bit grayscale",
            "exif_orientation": True,
            "resize": info.resize,
            "image_size": size,
            "mean": info.mean[:channels],
            "std": info.std[:channels],
            "formula": "(pixel / 255 - mean) / std, per channel",
        },
        "tta": info.tta,
        **({"opset": OPSET} if format == "onnx" else {}),
        **extra,
    }
    return write_text_atomic(metadata_path(path), json.dumps(values, indent=2))
