"""Keras models for the TensorFlow backend: the seed tutorial's CNN and keras.applications backbones.

Every model takes float pixels in 0..255, NHWC, and returns logits: the
preprocessing each architecture expects (the tutorial's ``Rescaling(1/255)``,
ImageNet's caffe / tf / torch modes) is a layer inside the model, so a saved
``.keras`` file is the whole classifier and an exporter needs nothing else.
Only built-in or registered layers are used (no ``Lambda``), so the file
loads with ``safe_mode=True``.

A backbone model is ``inputs -> preprocess -> backbone (inference mode) ->
global average pool -> dense``: the backbone runs with ``training=False``
in every stage, so fine-tuning keeps the pretrained BatchNorm statistics
(Keras's transfer-learning advice, as the torch engine does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgclf.backends import KERAS_APPLICATIONS, keras_model_name
from imgclf.errors import ImgclfError, one_line
from imgclf.models.keras_setup import keras

BACKBONE = "backbone"  # the layer name of a keras.applications backbone inside our model
HEAD = "classifier"
# caffe: BGR, minus the ImageNet mean in 0..255; tf: -1..1; torch: ImageNet mean/std; none: built in.
# MobileNetV3's built-in rescaling is switched off (include_preprocessing=False) so ours is the one place.
_PREPROCESSING = {"ResNet50": "caffe", "VGG16": "caffe", "InceptionV3": "tf", "MobileNetV2": "tf",
                  "DenseNet121": "torch", "MobileNetV3Small": "tf", "MobileNetV3Large": "tf",
                  "EfficientNetB0": "none"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="imgclf")
class ImagenetPreprocess(keras.layers.Layer):
    """keras.applications' ``preprocess_input`` as a layer (0..255 RGB in), so it is saved with the model."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images: Any) -> Any:
        if self.mode == "caffe":
            return keras.ops.flip(images, axis=-1) - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=images.dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_IMAGENET_MEAN, dtype=images.dtype)
            std = keras.ops.convert_to_tensor(_IMAGENET_STD, dtype=images.dtype)
            return (images / 255.0 - mean) / std
        return images

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def tutorial_cnn(num_classes: int, image_size: int, channels: int = 3, dropout: float = 0.0,
                 widths: tuple[int, ...] = (16, 32, 64), hidden: int = 128) -> keras.Model:
    """The TensorFlow image-classification tutorial's Sequential model, layer for layer.

    Rescaling, ``widths`` Conv2D 3x3 "same" + ReLU + MaxPooling2D blocks,
    Dropout (the tutorial's 0.2 when ``dropout`` is given), Flatten, Dense
    ``hidden`` ReLU and the logits. Augmentation comes from the shared data
    pipeline, not layers, so both backends see the same augmented images.
    """
    height = width = image_size
    for _ in widths:
        height, width = height // 2, width // 2
    if height < 1:
        raise ImgclfError(f"tutorial-cnn needs images of at least {2 ** len(widths)} px for {len(widths)} pooling "
                          f"steps, got image_size={image_size}; use a larger image size or fewer widths")
    layers: list[keras.layers.Layer] = [keras.Input((image_size, image_size, channels)), keras.layers.Rescaling(1.0 / 255)]
    for filters in widths:
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D()]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers += [keras.layers.Flatten(), keras.layers.Dense(hidden, activation="relu"),
               keras.layers.Dense(num_classes, name=HEAD)]
    return keras.Sequential(layers, name="tutorial_cnn")


def application(name: str, num_classes: int, image_size: int, channels: int = 3, weights: str | None = None,
                dropout: float = 0.0) -> keras.Model:
    """A keras.applications backbone with a new zero-initialised head; ``weights`` is 'imagenet', a file or None.

    The head starts at zero, as in the torch engine: every class starts equally
    likely and the first steps do not push random gradients into the backbone.
    """
    keras_name = KERAS_APPLICATIONS[name]
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ImgclfError(f"--weights {weights}: no such file; give the Keras no-top weights file "
                          f"of {keras_name} (.h5 or .weights.h5)")
    if weights is not None and channels != 3:
        raise ImgclfError(f"{keras_name}'s pretrained weights are for colour images; drop --grayscale")
    constructor = getattr(keras.applications, keras_name)
    extra = {"include_preprocessing": False} if keras_name.startswith("MobileNetV3") else {}
    try:
        backbone = constructor(include_top=False, weights=weights, input_shape=(image_size, image_size, channels),
                               **extra)
    except ImgclfError:
        raise
    except Exception as error:  # a failed download, a file for another architecture, a too-small input
        first_line = one_line(error)
        if weights == "imagenet":
            raise ImgclfError(f"could not get Keras's ImageNet weights for {keras_name} ({first_line}); when "
                              f"offline, pass --weights FILE (the no-top .h5 from keras.applications)") from None
        raise ImgclfError(f"{keras_name} could not be built with weights={weights} at {image_size} px "
                          f"({first_line})") from None
    backbone.name = BACKBONE
    inputs = keras.Input((image_size, image_size, channels))
    # the weights' own preprocessing; from scratch any -1..1 scaling will do (EfficientNet brings its own)
    mode = _PREPROCESSING[keras_name] if weights is not None or _PREPROCESSING[keras_name] == "none" else "tf"
    features = backbone(ImagenetPreprocess(mode)(inputs), training=False)
    features = keras.layers.GlobalAveragePooling2D()(features)
    if dropout:
        features = keras.layers.Dropout(dropout)(features)
    outputs = keras.layers.Dense(num_classes, kernel_initializer="zeros", name=HEAD)(features)
    return keras.Model(inputs, outputs, name=name)


def build_model(name: str, num_classes: int, image_size: int, channels: int, model_args: dict[str, Any],
                weights: str | None) -> keras.Model:
    """The model ``name`` (imgclf or Keras spelling) for ``num_classes`` at ``image_size``."""
    name = keras_model_name(name)
    arguments = dict(model_args)
    try:
        if name == "tutorial-cnn":
            if "widths" in arguments:
                arguments["widths"] = tuple(arguments["widths"])
            return tutorial_cnn(num_classes, image_size, channels, **arguments)
        return application(name, num_classes, image_size, channels, weights=weights, **arguments)
    except TypeError as error:
        raise ImgclfError(f"--model-arg for {name} on tensorflow: {error}") from None


def count_parameters(model: keras.Model) -> int:
    """Learnable values, frozen or not, as torch counts parameters: BatchNorm's moving statistics are not."""
    return int(sum(int(np.prod(variable.shape)) for variable in model.weights if "moving_" not in variable.path))


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The keras.applications backbone inside ``model``, None for the tutorial CNN."""
    try:
        return model.get_layer(BACKBONE)
    except ValueError:
        return None
