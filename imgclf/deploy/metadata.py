"""``<file>.json`` beside every exported model file: how to feed it, what it returns, which weights it came from.

Written by ``export`` and ``quantize``; read by the runtime chooser
(``--runtime auto`` takes the speeds measured here, an int8 file's too, when
``measured_on`` names this machine, and ignores an export whose weights
digest no longer matches the bundle's, or whose file is not the one the
metadata describes).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf.data.hierarchy import SEPARATOR, label_tree
from imgclf.deploy.bundle import KERAS_FILE, MODEL_FILE, WEIGHTS_FILE, BundleInfo
from imgclf.files import write_text_atomic
from imgclf.version import __version__

ONNX_OPSET = 17  # every ONNX export, from either backend
NHWC_FORMATS = ("savedmodel", "tflite")  # Keras's own layout; ONNX and TorchScript take NCHW


def metadata_path(model_file: Path) -> Path:
    """The JSON written beside an exported file (``model.onnx`` -> ``model.onnx.json``)."""
    return model_file.with_name(model_file.name + ".json")


def weights_file_digest(directory: Path) -> str:
    """sha256 of the bundle's weights file bytes (``model.keras`` for Keras): ties an export to the exact weights
    it was made from (not :func:`imgclf.distributed.tensors_digest`, which hashes tensors in memory)."""
    weights = directory / WEIGHTS_FILE
    return file_digest(weights if weights.is_file() else directory / KERAS_FILE)


def bundle_content_id(directory: Path) -> str:
    """A bundle's version name: 12 hex digits of sha256 over its weights file's digest and ``model.json``'s bytes.

    The same weights with other classes, thresholds or calibration are
    another version; a copy of the folder is the same one. Model folders,
    the prediction log and served answers all name a model by it.
    """
    digest = hashlib.sha256(weights_file_digest(directory).encode())
    digest.update((directory / MODEL_FILE).read_bytes())
    return digest.hexdigest()[:12]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_bytes(path: Path) -> int:
    """An exported file's size; a folder's (SavedModel, OpenVINO IR), all its files'."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) if path.is_dir() else path.stat().st_size


def read_export(directory: Path, model_file: Path) -> dict[str, Any] | None:
    """The metadata of ``model_file``, an export of the bundle at ``directory``, when both exist and the weights match.

    The metadata also records the exported file's own sha256: an export
    killed between writing the file and its metadata, or a file replaced
    since, does not match and is treated as missing (export again).
    """
    meta = metadata_path(model_file)
    if not model_file.exists() or not meta.is_file():  # a file, or a folder (SavedModel, OpenVINO IR)
        return None
    try:
        values = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if values.get("weights_sha256") != weights_file_digest(directory):
        return None
    recorded = values.get("file_sha256")  # none for a folder
    return values if recorded is None or recorded == file_digest(model_file) else None


def write_metadata(path: Path, format: str, directory: Path, info: BundleInfo, **extra: Any) -> Path:
    """``<file>.json``: everything a production stack needs to feed the file and read its output."""
    channels, size = info.channels, info.image_size
    shape, layout = (["batch", size, size, channels], "NHWC") if format in NHWC_FORMATS else (["batch", channels, size, size], "NCHW")
    values = {
        "format": format,
        "file": path.name,
        "imgclf_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(directory.resolve()),
        "weights_sha256": weights_file_digest(directory),
        **({"file_sha256": file_digest(path)} if path.is_file() else {}),  # a SavedModel is a folder
        "architecture": info.architecture,
        "classes": info.classes,
        "multilabel": info.multilabel,
        "backend": info.backend,
        "input": {"name": "input", "shape": shape, "dtype": "float32", "layout": layout},
        "output": {"name": "logits", "shape": ["batch", len(info.classes)],
                   "activation": "sigmoid" if info.multilabel else "softmax",
                   "temperature": info.temperature},  # divide the logits by it before the activation
        "preprocessing": {
            "decode": "8-bit RGB" if channels == 3 else "8-bit grayscale",
            "exif_orientation": True,
            "resize": info.resize,
            "image_size": size,
            "mean": info.mean[:channels],
            "std": info.std[:channels],
            "formula": "(pixel / 255 - mean) / std, per channel",
        },
        "tta": info.tta,  # average the logits of the image and its mirror
        # ... and, when above 0, of the mirror pairs shifted this many pixels up-left and down-right (borders reflected)
        "tta_shift": info.tta_shift if info.tta else 0,
        # ... and, when above 0, of the centre crop of this share of each side resized back (PIL bilinear), mirrored too
        "tta_zoom": info.tta_zoom if info.tta else 0,
        # a binary model says `positive` when its probability reaches thresholds[positive] (empty: the argmax)
        "decision": {"positive": info.positive, "thresholds": info.thresholds, "goal": info.threshold_goal},
        **_hierarchy(info),
        **({"opset": ONNX_OPSET} if format == "onnx" else {}),
        **extra,
    }
    return write_text_atomic(metadata_path(path), json.dumps(values, indent=2))


def _hierarchy(info: BundleInfo) -> dict[str, Any]:
    """For path classes (``animals/dog``): how a consumer reads the levels from the leaf probabilities."""
    tree = None if info.multilabel else label_tree(info.classes)
    if tree is None:
        return {}
    return {"hierarchy": {"separator": SEPARATOR, "levels": tree.depth, "label_depth": info.config.get("label_depth"),
                          "rule": "a category's probability is the sum of the probabilities of the classes "
                                  "whose path starts with it"}}
