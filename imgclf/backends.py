"""The TensorFlow backend's facts that need no framework: its model names and the install check.

Imports neither framework, so the CLI checks a model name (and says how to
install TensorFlow when it is missing) before anything slow starts. Which
backend does what is decided in :mod:`imgclf.engines.registry`.
"""

from __future__ import annotations

import importlib.util

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
