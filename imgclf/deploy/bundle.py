"""The model bundle: a folder that fully describes a trained model, safe to load.

```
model/
  model.json            format version, backend, architecture and its arguments, classes,
                        input size, normalisation, preprocessing, calibration temperature,
                        training config, final metrics
  weights.safetensors   the weights (safetensors cannot execute code on load), backend torch
  model.keras           backend tensorflow: the Keras model, loaded with safe_mode=True; it takes
                        0..255 float NHWC pixels (its preprocessing is inside it) and returns logits
```

Predict, evaluate, export and serve need nothing else: no training data, no
run directory, no pickles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.errors import ImgclfError
from imgclf.files import write_folder_atomic, write_text_atomic

if TYPE_CHECKING:
    from imgclf.data.decode import ResizePolicy

BUNDLE_FORMAT = 1
ENSEMBLE = "ensemble"  # BundleInfo.kind of an ensemble bundle
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
KERAS_FILE = "model.keras"  # the weights of a backend: tensorflow bundle, with the Keras model's structure
# Fields that format 1 gained after its first release, with the value that means "not used". A bundle writes them
# only when used, so a bundle that does not use them still loads in the imgclf versions from before them; one that
# does is refused there by name (read_bundle_info). A new optional field joins this table; a field that changes
# what an existing one means raises BUNDLE_FORMAT instead. Changing a value here misreads every bundle without it.
LATER_FIELDS: dict[str, Any] = {"tta_shift": 0, "tta_zoom": 0.0}


@dataclass
class BundleInfo:
    """The contents of ``model.json``."""

    architecture: str  # the model name given to --model (imgclf models lists them)
    model_args: dict[str, Any]  # the arguments the architecture was built with (--model-arg)
    classes: list[str]  # the output order; path classes (animals/dog) for categories
    image_size: int  # input side in pixels
    mean: list[float]  # per-channel normalisation: (pixel / 255 - mean) / std
    std: list[float]  # see mean
    multilabel: bool = False  # sigmoid per label instead of one softmax
    channels: int = 3  # 1: trained on grey images (--grayscale)
    resize: ResizePolicy = "squash"  # how an image reaches image_size: squash, crop or pad
    tta: bool = False  # average the logits of the image and its mirror
    # with tta, also average over the image shifted diagonally by this many pixels both ways (borders mirrored)
    tta_shift: int = 0
    # with tta, also average over the centre crop of this share of each side zoomed back to image_size, and its mirror
    tta_zoom: float = 0.0
    temperature: float = 1.0  # calibration: logits / temperature before the softmax (1: not calibrated)
    # decisions: binary models say `positive` when its probability reaches thresholds[positive]; multi-label models
    # say every label whose probability reaches its own threshold; chosen on val for `threshold_goal`
    positive: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)  # class -> probability at which it is said
    threshold_goal: str = ""  # the --threshold-for goal the thresholds were chosen for
    backend: str = "torch"  # torch (weights.safetensors) or tensorflow (model.keras)
    format_version: int = BUNDLE_FORMAT  # raised when a field changes meaning; newer bundles are refused
    imgclf_version: str = ""  # the version that wrote the bundle
    config: dict[str, Any] = field(default_factory=dict)  # the resolved training config (config.yaml)
    metrics: dict[str, Any] = field(default_factory=dict)  # final figures on the held-out split
    kind: str = "model"  # or "ensemble": soft voting over the member bundles copied inside
    members: list[dict[str, Any]] = field(default_factory=list)  # ensemble: {"path" (relative), "weight", "name"}


def write_bundle(info: BundleInfo, state_dict: dict[str, Any], directory: Path) -> Path:
    """Write a torch model's bundle: ``model.json`` and ``weights.safetensors``."""
    from safetensors.torch import save

    def save_weights(folder: Path) -> None:
        tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
        # serialised in memory, written by Python: a full disk is a plain OSError, not a wrapped safetensors one
        (folder / WEIGHTS_FILE).write_bytes(save(tensors, metadata={"format": "imgclf",
                                                                    "architecture": info.architecture}))

    return _write_atomically(info, save_weights, directory)


def write_keras_bundle(info: BundleInfo, model: Any, directory: Path) -> Path:
    """Write a Keras model's bundle: ``model.json`` and ``model.keras`` (no optimiser state; safe-mode loadable)."""

    from imgclf.models.keras_setup import keras

    def save_model(folder: Path) -> None:
        shipped = keras.models.clone_model(model)  # uncompiled: no optimiser state in the bundle
        shipped.set_weights(model.get_weights())
        shipped.save(folder / KERAS_FILE)

    return _write_atomically(info, save_model, directory)


def _write_atomically(info: BundleInfo, save_weights: Callable[[Path], None], directory: Path) -> Path:
    """Write ``directory`` atomically: a half-written bundle never replaces a good one."""
    from imgclf.version import __version__

    info.imgclf_version = __version__

    def fill(folder: Path) -> None:
        save_weights(folder)
        (folder / MODEL_FILE).write_text(bundle_json(info), encoding="utf-8")

    return write_folder_atomic(directory, fill)


def bundle_json(info: BundleInfo) -> str:
    """``model.json``'s text: every field, except the :data:`LATER_FIELDS` a bundle does not use."""
    values = {name: value for name, value in asdict(info).items()
              if name not in LATER_FIELDS or value != LATER_FIELDS[name]}
    return json.dumps(values, indent=2)


def write_bundle_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    """Replace the final metrics in a written bundle's ``model.json`` (atomically).

    Training scores the held-out splits with the bundle itself, the way
    ``evaluate`` will, so the metrics can only be filled in after it is written.
    """
    update_bundle_info(directory, metrics=metrics)


def update_bundle_info(directory: Path, **fields: Any) -> BundleInfo:
    """Replace ``fields`` of a written bundle's ``model.json`` (atomically), e.g. the decision threshold chosen on val."""
    info = read_bundle_info(directory)
    for name, value in fields.items():
        setattr(info, name, value)
    write_text_atomic(directory / MODEL_FILE, bundle_json(info))
    return info


def find_bundle(path: str | Path) -> Path:
    """The bundle folder for a bundle path or a run directory (``RUN/model``)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    if not path.exists():
        raise ImgclfError(f"{path}: no such model; give a run directory (runs/NAME) or its model/ folder")
    raise ImgclfError(f"{path} holds no {MODEL_FILE}; give a run directory whose training finished, or a bundle folder")


def read_bundle_info(directory: Path) -> BundleInfo:
    """``model.json`` of the bundle at ``directory``; a bundle that needs a newer imgclf is refused by what it needs."""
    from imgclf.version import __version__

    path = directory / MODEL_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ImgclfError(f"{path} is not a valid imgclf model description ({error})") from None
    if not isinstance(values, dict):
        raise ImgclfError(f"{path} is not a valid imgclf model description (a JSON object was expected)")
    version = values.get("imgclf_version")
    writer = f"imgclf {version}" if version and version != __version__ else "a newer imgclf"
    if isinstance(values.get("format_version"), int) and values["format_version"] > BUNDLE_FORMAT:
        raise ImgclfError(f"{directory} was written by {writer} in bundle format {values['format_version']}, and this "
                          f"imgclf ({__version__}) reads format {BUNDLE_FORMAT}: upgrade imgclf to load it")
    unknown = sorted(set(values) - set(BundleInfo.__dataclass_fields__))
    if unknown:
        raise ImgclfError(f"{directory} was written by {writer} and uses {', '.join(unknown)}, which this imgclf "
                          f"({__version__}) does not know: upgrade imgclf to load it")
    try:
        return BundleInfo(**values)
    except TypeError as error:  # a required field is missing
        raise ImgclfError(f"{path} is not a valid imgclf model description ({error})") from None
