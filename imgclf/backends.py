"""Which framework trains a model: ``torch`` (the default) or ``tensorflow`` (Keras 3).

Imports neither framework: the CLI checks a backend choice, its model name
and its options (and says how to install TensorFlow when it is missing)
before anything slow starts.
"""

from __future__ import annotations

import importlib.util

from imgclf.config import TrainConfig
from imgclf.errors import ImgclfError

INSTALL_TENSORFLOW = "pip install 'imgclf[tensorflow]'"

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
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        raise ImgclfError(f"--backend tensorflow needs TensorFlow, which is not installed; install it with: "
                          f"{INSTALL_TENSORFLOW}")


def check_backend(config: TrainConfig, multilabel: bool) -> None:
    """Refuse, by name, the options the Keras engine does not implement (rather than ignore them)."""
    if config.backend != "tensorflow":
        return
    require_tensorflow()
    unsupported = {
        "--time-budget": config.time_budget is not None,
        "--mixup": config.mixup > 0,
        "--cutmix": config.cutmix > 0,
        "--ema": bool(config.ema),
        "--l1": config.l1 > 0,
        "--dropout": config.dropout is not None,
        "--drop-path": config.drop_path is not None,
        "--compile": config.compile,
        f"--precision {config.precision}": config.precision not in ("auto", "fp32"),
        "--device cuda (tensorflow-cpu)": config.device == "cuda",
        "multi-label data": multilabel,
    }
    named = [name for name, used in unsupported.items() if used]
    if named:
        raise ImgclfError(f"--backend tensorflow does not support {', '.join(named)}; "
                          "drop it or train with --backend torch")
