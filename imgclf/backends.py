"""What each ``--backend`` can and cannot do, declared once: one :class:`BackendRecord` per backend.

Every module that asks a question about a backend (which options it
refuses and why, whether it has the linear probe, the photo planner, the
time budget, distributed training, which runtime runs its bundles, its
export formats and quantisers, its explainer) reads the record here
instead of comparing the backend's name. The module sits below every one
of them (it imports no framework and no other imgclf module than
:mod:`imgclf.errors`), so the CLI can check a ``--backend`` before anything
slow starts. :mod:`imgclf.engines.registry` maps a name to its engine class
and prepares a config with it; to add a backend, :func:`register` its
record and its engine there.

The TensorFlow backend's model names and install check live here too:
they are facts about the backend that need no framework.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgclf.errors import ImgclfError

INSTALL_TENSORFLOW = "pip install 'imgclf[tensorflow]'"
DEFAULT_BACKEND = "torch"

# The keras.applications backbones, under the timm names the torch backend uses for the
# same architecture, so `--model resnet50` means one network on either backend.
KERAS_APPLICATIONS = {
    "resnet50": "ResNet50",
    "vgg16": "VGG16",
    "inception_v3": "InceptionV3",
    "densenet121": "DenseNet121",
    "mobilenetv2_100": "MobileNetV2",
    "mobilenetv3_small_100": "MobileNetV3Small",
    "mobilenetv3_large_100": "MobileNetV3Large",
    "efficientnet_b0": "EfficientNetB0",
}
KERAS_MODELS = ("tutorial-cnn", *KERAS_APPLICATIONS)


@dataclass(frozen=True)
class Refusal:
    """An option a backend does not implement: refused by name when a run uses it, rather than ignored.

    ``option`` is the config field a search must leave alone (None when
    only some values are refused, such as ``--optimizer muon``).
    """

    flag: str  # as the error names it: "--mixup", "--precision {config.precision}" (formatted with the config)
    used: Callable[[Any], bool]  # (TrainConfig) -> whether the run asks for it
    option: str | None = None


@dataclass(frozen=True)
class BackendRecord:
    """One backend's facts: its engine, what it refuses, what it can do."""

    name: str
    engine_class: str  # "module:Class", imported only when training starts
    runtime: str  # the runtime that runs its bundles natively (``--runtime``'s name for it)
    export_formats: tuple[str, ...]  # ``imgclf export --format`` values, the first the default suggestion
    quantisers: tuple[str, ...]  # the export formats ``--quantize int8`` works on
    explainer: str  # which Grad-CAM explains its models: "torch" or "keras"
    refuses: tuple[Refusal, ...] = ()
    linear_probe: bool = False  # the probe stage can be one logistic-regression fit on cached embeddings
    photo_planner: bool = False  # the default pretrained-photo recipe (trunks and views) applies
    time_budget: bool = False  # --time-budget fits the schedule to measured speed
    distributed: bool = False  # trains as one rank of a torchrun job (--nproc)
    embeddings: bool = False  # its bundles can embed images (imgclf embed --model BUNDLE)
    needs: tuple[str, ...] = ()  # Python packages that must be installed to train with it
    framework: str = ""  # what the error calls them ("TensorFlow")
    install: str = ""  # the command that installs them

    def refused(self, config: Any) -> list[str]:
        """The flags of ``config`` this backend cannot honour (``--time-budget`` unless it has a budget)."""
        named = [] if self.time_budget or not config.time_budget else ["--time-budget"]
        return named + [refusal.flag.format(config=config) for refusal in self.refuses if refusal.used(config)]

    def refused_options(self) -> set[str]:
        """The config fields this backend never reads, so a search must not vary them."""
        return {refusal.option for refusal in self.refuses if refusal.option} | (
            set() if self.time_budget else {"time_budget"})

    def check(self, config: Any) -> None:
        """Refuse, by name, the options this backend does not implement (rather than ignore them)."""
        named = self.refused(config)
        if named:
            raise ImgclfError(f"--backend {self.name} does not support {', '.join(named)}; "
                              f"drop it or train with --backend {DEFAULT_BACKEND}")

    def check_processes(self, processes: int) -> None:
        """Refuse a run of ``processes`` processes (torchrun, ``--nproc``) when this backend cannot train so."""
        if processes > 1 and not self.distributed:
            raise ImgclfError(f"--backend {self.name} cannot train in {processes} processes (torchrun, --nproc); "
                              f"train with --backend {DEFAULT_BACKEND}, or in one process")

    def require(self) -> None:
        """A one-line answer, with the command that fixes it, when the framework is not installed."""
        if any(importlib.util.find_spec(package) is None for package in self.needs):
            raise ImgclfError(f"--backend {self.name} needs {self.framework}, which is not installed; "
                              f"install it with: {self.install}")


def _flag(name: str, used: Callable[[Any], bool]) -> Refusal:
    """A whole option refused: ``--name`` whenever it is used, and left out of a search."""
    return Refusal(f"--{name.replace('_', '-')}", used, name)


RECORDS: dict[str, BackendRecord] = {}


def register(record: BackendRecord) -> BackendRecord:
    """Make ``record``'s backend known to every module that consults the records (a later one replaces it)."""
    RECORDS[record.name] = record
    return record


def backend_record(name: str) -> BackendRecord:
    """The record of backend ``name``, or a one-line error listing the known ones."""
    try:
        return RECORDS[name]
    except KeyError:
        raise ImgclfError(f"--backend {name} is not known; choose one of {', '.join(RECORDS)}") from None


def record_with_runtime(runtime: str) -> BackendRecord | None:
    """The backend whose bundles ``runtime`` runs natively, if any."""
    return next((record for record in RECORDS.values() if record.runtime == runtime), None)


register(BackendRecord(
    "torch", "imgclf.engines.torch_engine:TorchEngine", runtime="torch", export_formats=("onnx", "torchscript", "openvino"),
    quantisers=("onnx", "openvino"), explainer="torch", linear_probe=True, photo_planner=True, time_budget=True,
    distributed=True, embeddings=True))
register(BackendRecord(
    "tensorflow", "imgclf.engines.keras_engine:KerasEngine", runtime="keras",
    export_formats=("savedmodel", "tflite", "onnx"), quantisers=("tflite", "onnx"), explainer="keras",
    needs=("tensorflow", "keras"), framework="TensorFlow", install=INSTALL_TENSORFLOW,
    refuses=(
        _flag("mixup", lambda config: config.mixup > 0),
        _flag("cutmix", lambda config: config.cutmix > 0),
        _flag("ema", lambda config: bool(config.ema)),
        _flag("lookahead", lambda config: bool(config.lookahead)),
        Refusal("--optimizer muon", lambda config: config.optimizer == "muon"),
        _flag("whitening_bias_epochs", lambda config: config.whitening_bias_epochs is not None),
        _flag("low_res", lambda config: config.low_res is not None),
        _flag("l1", lambda config: config.l1 > 0),
        _flag("dropout", lambda config: config.dropout is not None),
        _flag("drop_path", lambda config: config.drop_path is not None),
        _flag("compile", lambda config: bool(config.compile)),
        _flag("sync_bn", lambda config: bool(config.sync_bn)),
        Refusal("--strategy tail", lambda config: config.strategy == "tail"),
        Refusal("--precision {config.precision}", lambda config: config.precision not in ("auto", "fp32")),
        Refusal("--device cuda (tensorflow-cpu)", lambda config: config.device == "cuda"),
    )))


def keras_model_name(name: str) -> str:
    """The imgclf name of a TensorFlow-backend model, accepting Keras's spelling too (ResNet50)."""
    if name in KERAS_MODELS:
        return name
    by_keras_name = {keras.lower(): ours for ours, keras in KERAS_APPLICATIONS.items()}
    if name.lower() in by_keras_name:
        return by_keras_name[name.lower()]
    raise ImgclfError(f"--model {name} is not available with --backend tensorflow; "
                      f"choose one of {', '.join(KERAS_MODELS)} (or use --backend torch)")


def require_tensorflow() -> None:
    """A one-line answer, with the command that fixes it, when TensorFlow is not installed."""
    backend_record("tensorflow").require()
