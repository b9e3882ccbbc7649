"""Grad-CAM heat maps: where in an image a classifier's decision comes from.

Grad-CAM (Selvaraju et al. 2017) weighs the channels of the last spatial
feature map by the gradient of a class's logit and keeps the positive part:
a coarse map of the regions that raise that class, upsampled to the image.
PyTorch bundles use captum's ``LayerGradCam``; Keras bundles the same
computation with ``tf.GradientTape``, so both give the same kind of array.

The layer is found by running the model once, not by name: the last module
whose output is an (N, C, H, W) map with H, W > 1. A network that turns its
map into tokens after that (a ViT after its patch embedding) or never has
one has nothing for Grad-CAM to show, and is refused with a one-line error.
Maps are at the model's input size, on the image as the model sees it
(after the bundle's resize policy): ``Explanation.pixels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.deploy.bundle import BundleInfo
from imgclf.errors import ImgclfError

OVERLAY_ALPHA = 0.45  # share of the heat colour in an overlay


@dataclass
class Explanation:
    """Grad-CAM maps of one image for its top classes."""

    pixels: np.ndarray  # (H, W, C) uint8: the image at the model's input size
    top: list[tuple[str, float]]  # (class, probability), best first
    maps: np.ndarray  # (len(top), H, W) float32 in [0, 1]: one heat map per top class
    layer: str  # the feature map's module (torch) or layer (Keras) name

    @property
    def map(self) -> np.ndarray:
        """The top class's heat map (H, W)."""
        return self.maps[0]


class TorchGradCam:
    """Grad-CAM for a PyTorch bundle: captum's LayerGradCam on the last spatial feature map."""

    def __init__(self, directory: Path, info: BundleInfo) -> None:
        import torch

        from imgclf.deploy.runtime import load_torch_model

        self.info = info
        self.model = load_torch_model(directory, info).eval()
        example = torch.zeros(1, info.channels, info.image_size, info.image_size)
        self.layer_name, self.layer = _last_spatial_module(self.model, example, info.architecture)

    def maps(self, pixels: np.ndarray, targets: list[int]) -> np.ndarray:
        """(len(targets), H, W) maps of one image (H, W, C uint8) for each target class."""
        import torch
        from captum.attr import LayerAttribution, LayerGradCam

        from imgclf.data.augment import augment_batch
        from imgclf.data.augment_presets import PRESETS

        batch = np.repeat(pixels[None], len(targets), axis=0)
        inputs = augment_batch(torch.from_numpy(batch), PRESETS["none"], torch.Generator(),
                               tuple(self.info.mean), tuple(self.info.std)).contiguous()
        attributions = LayerGradCam(self.model, self.layer).attribute(inputs, target=targets, relu_attributions=True)
        upsampled = LayerAttribution.interpolate(attributions.detach(), tuple(pixels.shape[:2]),
                                                 interpolate_mode="bilinear")
        return _normalised(upsampled[:, 0].numpy())


def _last_spatial_module(model: Any, example: Any, architecture: str) -> tuple[str, Any]:
    """(name, module) of the last module with an (N, C, H, W), H, W > 1 output; refused if tokens follow it."""
    import torch

    from imgclf.models.folding import run_with_hooks

    order: list[tuple[str, Any, int]] = []  # (name, module, rank of its output)
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(module: Any, inputs: Any, output: Any, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                spatial = output.ndim == 4 and output.shape[-1] > 1 and output.shape[-2] > 1
                tokens = output.ndim == 3 and output.shape[1] > 1
                order.append((name, module, 4 if spatial else 3 if tokens else 0))

        hooks.append(module.register_forward_hook(record))
    run_with_hooks(model, example, hooks)
    spatial = [index for index, (_, _, rank) in enumerate(order) if rank == 4]
    tokens = [index for index, (_, _, rank) in enumerate(order) if rank == 3]
    if not spatial or (tokens and tokens[-1] > spatial[-1]):
        raise ImgclfError(f"{architecture} has no spatial feature map at its end (its last layers work on "
                          f"{'token sequences' if tokens else 'vectors'}), so Grad-CAM cannot explain it; "
                          "explain a convolutional model (fastnet, resnet, efficientnet, convnext)")
    name, module, _ = order[spatial[-1]]
    return name, module


class KerasGradCam:
    """Grad-CAM for a Keras bundle with tf.GradientTape on the last top-level layer with a spatial output.

    Our Keras models are a chain of top-level layers (Sequential, or inputs ->
    preprocessing -> backbone -> pool -> head), so the model is run in two
    parts: up to that layer, whose output the tape watches, and the rest.
    """

    def __init__(self, model: Any, info: BundleInfo) -> None:
        from imgclf.models.keras_setup import keras

        self.info = info
        self.layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        spatial = [index for index, layer in enumerate(self.layers) if _keras_spatial(layer)]
        if not spatial:
            raise ImgclfError(f"{info.architecture} has no spatial feature map at its end, so Grad-CAM cannot "
                              "explain it; explain a convolutional model")
        self.split = spatial[-1] + 1
        self.layer_name = self.layers[spatial[-1]].name

    def maps(self, pixels: np.ndarray, targets: list[int]) -> np.ndarray:
        from imgclf.deploy.keras_runtime import keras_input
        from imgclf.models.keras_setup import tf

        features = tf.constant(keras_input(pixels[None], self.info))
        for layer in self.layers[:self.split]:
            features = layer(features, training=False)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(features)
            logits = features
            for layer in self.layers[self.split:]:
                logits = layer(logits, training=False)
            scores = [logits[0, target] for target in targets]
        maps = []
        for score in scores:
            gradient = tape.gradient(score, features)[0]  # (h, w, C)
            weights = tf.reduce_mean(gradient, axis=(0, 1))
            cam = tf.nn.relu(tf.reduce_sum(features[0] * weights, axis=-1))[None, :, :, None]
            maps.append(tf.image.resize(cam, pixels.shape[:2], method="bilinear")[0, :, :, 0].numpy())
        del tape
        return _normalised(np.stack(maps))


def _keras_spatial(layer: Any) -> bool:
    shape = getattr(layer, "output", None)
    shape = getattr(shape, "shape", None)
    return shape is not None and len(shape) == 4 and (shape[1] or 0) > 1 and (shape[2] or 0) > 1


def _normalised(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] by its own maximum (an all-zero map stays zero)."""
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peaks = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image (H, W, C uint8) with ``heat`` (H, W in [0, 1]) blended on top in the jet colour map."""
    from matplotlib import colormaps

    colour = colormaps["jet"](heat)[:, :, :3]
    image = pixels.astype(np.float32) / 255.0
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.clip((1 - alpha) * image + alpha * colour, 0.0, 1.0)


def save_explanation(explanation: Explanation, path: Path, title: str = "") -> Path:
    """One PNG: the image and its overlay for each top class, titled with the class and probability."""
    from imgclf.pictures import save_image_grid

    tiles = [explanation.pixels] + [overlay(explanation.pixels, heat) for heat in explanation.maps]
    titles = ["input"] + [f"{name} {probability:.0%}" for name, probability in explanation.top]
    return save_image_grid(tiles, titles, path, columns=len(tiles), title=title or None)
