"""One registry for every model name: our own networks first, then every timm architecture.

A model is a name plus keyword arguments (timm's idea): ``create_model``
builds any of them with a fresh head for the task's classes, ``list_models``
lists them for ``imgclf models`` without building any, and a misspelt name
gets the closest real ones in its error.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import is_model_pretrained, model_entrypoint
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.models.pretrained import describe_error, pretrained_source, timm_pretrained_cfg
from imgclf.models.small import FastNet, TutorialCNN
from imgclf.models.stack import STACK_SEPARATOR, TrunkStack, is_stack, stack_parts

SUGGESTIONS = 5
FILTER_WILDCARDS = re.compile(r"[*?\[]")

ImageSize = int | tuple[int, int]


@dataclass(frozen=True)
class ModelInfo:
    """What ``imgclf models`` shows for one name."""

    name: str
    family: str  # "imgclf" (ours) or "timm"
    description: str
    default_size: int | None  # the image side the architecture (or its pretrained weights) expects
    pretrained: str | None  # where pretrained weights are on this machine now, None when nowhere


def _build_tutorial_cnn(num_classes: int, in_chans: int, image_size: ImageSize | None, **kwargs: Any) -> nn.Module:
    return TutorialCNN(num_classes, in_chans=in_chans, image_size=image_size or TUTORIAL_CNN.default_size,  # type: ignore[arg-type]  # its default size is set (180)
                       **kwargs)


def _build_fastnet(num_classes: int, in_chans: int, image_size: ImageSize | None, **kwargs: Any) -> nn.Module:
    # Global pooling: the network is the same at every image size.
    return FastNet(num_classes, in_chans=in_chans, **kwargs)


TUTORIAL_CNN = ModelInfo(
    "tutorial-cnn",
    "imgclf",
    "the TensorFlow tutorial CNN: 3 conv+pool blocks, dense 128; a baseline for one image size",
    180,
    None,
)
FASTNET = ModelInfo(
    "fastnet",
    "imgclf",
    "airbench94-style fast net for small images: whitening conv, 3 conv groups, any size from 8 px",
    32,
    None,
)
OWN_MODELS: dict[str, tuple[ModelInfo, Callable[..., nn.Module]]] = {
    TUTORIAL_CNN.name: (TUTORIAL_CNN, _build_tutorial_cnn),
    FASTNET.name: (FASTNET, _build_fastnet),
}


def model_names() -> list[str]:
    """Every name ``create_model`` accepts, ours first (timm also accepts "name.tag" for a weight variant)."""
    return [*OWN_MODELS, *timm.list_models()]


def list_models(filter: str = "") -> list[ModelInfo]:
    """The models whose name matches ``filter``: a case-insensitive substring, or a pattern such as ``*lite*``.

    Nothing is instantiated: sizes come from timm's pretrained configs, so
    listing all ~1,300 names takes a fraction of a second.
    """
    return [model_info(name) for name in model_names() if _matches(name, filter)]


def model_info(name: str) -> ModelInfo:
    """The registry entry for one name."""
    if name in OWN_MODELS:
        return OWN_MODELS[name][0]
    _check_known(name)
    if is_stack(name):
        parts = [model_info(part) for part in stack_parts(name)]
        sources = [part.pretrained for part in parts]
        return ModelInfo(name=name, family="timm", description=f"a stack of {len(parts)} trunks under one head",
                         default_size=max(part.default_size or 0 for part in parts) or None,
                         pretrained="; ".join(sources) if all(sources) else None)  # type: ignore[arg-type]  # all(): no None
    config = timm_pretrained_cfg(name)
    module = model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    published = ", pretrained weights published" if is_model_pretrained(name) else ""
    return ModelInfo(
        name=name,
        family="timm",
        description=f"timm {module}{published}",
        default_size=config.input_size[-1] if config is not None else None,
        pretrained=pretrained_source(name),
    )


def create_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    image_size: ImageSize | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A freshly initialised model for ``num_classes`` classes; pretrained weights are loaded separately.

    Our names take their constructor arguments as ``kwargs`` (``widths``,
    ``depth``, ``dropout``...); timm names take timm's (``drop_rate``...).
    ``image_size`` matters to architectures built for one size: tutorial-cnn,
    and timm models with a fixed input size (ViTs), which get ``img_size``
    when it differs from their default; convolutional nets ignore it.
    """
    _check_known(name)
    if is_stack(name):
        trunks = [create_model(part, 0, in_chans=in_chans, image_size=image_size, **kwargs) for part in stack_parts(name)]
        return TrunkStack(trunks, num_classes)
    try:
        if name in OWN_MODELS:
            return OWN_MODELS[name][1](num_classes, in_chans, image_size, **kwargs)
        size_kwargs = _timm_size_kwargs(name, image_size)
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **size_kwargs, **kwargs
        )
    except (TypeError, ValueError, AssertionError) as error:  # constructors reject bad arguments these ways
        raise ImgclfError(_bad_arguments_message(name, kwargs, image_size, error)) from error


def default_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) in 0..1 units that ``name``'s pretrained weights were trained with (ImageNet's otherwise)."""
    _check_known(name)
    config = timm_pretrained_cfg(stack_parts(name)[0])
    if config is None:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return tuple(config.mean), tuple(config.std)


def suggest(name: str) -> list[str]:
    """The registered names closest to a misspelt ``name``, best first."""
    names = model_names()
    by_lower = {candidate.lower(): candidate for candidate in names}
    return [by_lower[match] for match in difflib.get_close_matches(name.lower(), list(by_lower), n=SUGGESTIONS)]


def _check_known(name: str) -> None:
    """Raise the "unknown model" error, with the closest names, for a name no registry has."""
    if is_stack(name):
        for part in stack_parts(name):
            if part in OWN_MODELS or not part:
                raise ImgclfError(f"model '{name}': a stack ('{STACK_SEPARATOR}' between names) is made of timm "
                                  f"backbones, and '{part}' is not one; e.g. tf_efficientnet_lite0+tf_efficientnet_lite1")
            _check_known(part)
        return
    if name in OWN_MODELS or timm.is_model(name):
        return
    closest = suggest(name)
    hint = f"closest: {', '.join(closest)}; " if closest else ""
    raise ImgclfError(f"unknown model '{name}'; {hint}run `imgclf models` to list them")


def _matches(name: str, filter: str) -> bool:
    filter = filter.lower()
    if FILTER_WILDCARDS.search(filter):
        return fnmatch.fnmatchcase(name.lower(), filter)
    return filter in name.lower()


def _timm_size_kwargs(name: str, image_size: ImageSize | None) -> dict[str, Any]:
    """``img_size`` for a fixed-input-size timm model asked for another size; nothing for the rest."""
    config = timm_pretrained_cfg(name)
    if image_size is None or config is None or not config.fixed_input_size:
        return {}
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return {} if size == tuple(config.input_size[1:]) else {"img_size": image_size}


def _bad_arguments_message(name: str, kwargs: dict[str, Any], image_size: ImageSize | None, error: Exception) -> str:
    """Name the argument the constructor rejected when its message names one of ours."""
    detail = describe_error(error)
    rejected = next((key for key in kwargs if f"'{key}'" in str(error)), None)
    if rejected is not None:
        return f"model '{name}' rejected argument {rejected}={kwargs[rejected]!r} ({detail}); remove it or check its spelling and value"
    if "'img_size'" in str(error):
        default = model_info(name).default_size
        return f"model '{name}' works only at {default} px and cannot be built for image_size={image_size}; use image size {default} or another model"
    arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) or "no extra arguments"
    return f"cannot build model '{name}' with {arguments} ({detail}); check the arguments against the model's documentation"
