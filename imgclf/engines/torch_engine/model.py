"""The model a run trains: made from the registry, with the normalisation it expects written into the data.

A pretrained model brings its weights' mean and std; a model trained from
scratch takes the training images' own (a strided sample covers every
class), and FastNet initialises its whitening filters from them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.distributed import World
from imgclf.engines.contract import TrainingData
from imgclf.errors import ImgclfError
from imgclf.models import create_model, load_pretrained, pretrained_source
from imgclf.models.pretrained import weights_fingerprint
from imgclf.recipes import model_family

log = logging.getLogger(__name__)

STATS_SAMPLE = 5000  # training images whose pixels give the normalisation of a from-scratch model


def create_model_for(config: TrainConfig, data: TrainingData, checkpoint: dict[str, Any] | None) -> nn.Module:
    """The model, with ``data.mean``/``std`` set to the normalisation it expects (its weights', the data's, the
    checkpoint's on resume, or the warm-start bundle's)."""
    assert config.model is not None  # resolved by the recipe before training
    channels = 1 if config.grayscale else 3
    model = create_model(config.model, len(data.classes), in_chans=channels, image_size=config.image_size,
                         **{**config.model_args, **regularisation_args(config)})
    if config.pretrained and checkpoint is None:
        weights = load_pretrained(model, config.model, Path(config.weights) if config.weights else None)
        log.info("pretrained weights: %s", weights.source)
        data.mean, data.std = tuple(weights.mean[:channels]), tuple(weights.std[:channels])
        if warm_pretrained(config, data):  # the run's trained tail and head over the pretrained trunk
            from imgclf.engines.warm_start import load_warm_start

            data.mean, data.std = load_warm_start(model, data.warm_start, data.classes)  # type: ignore[arg-type]  # warm_pretrained: a bundle is given
        return model
    if model_family(config.model) == "tutorial-cnn":
        data.mean, data.std = (0.0,) * channels, (1.0,) * channels  # the seed tutorial's Rescaling(1/255)
    else:
        _normalise_from_data(model, config, data)
    if checkpoint is not None:
        normalisation = checkpoint["normalisation"]
        data.mean, data.std = tuple(normalisation["mean"]), tuple(normalisation["std"])
    elif data.warm_start is not None:  # after the whitening decided what is frozen: the old weights set its values
        from imgclf.engines.warm_start import load_warm_start

        data.mean, data.std = load_warm_start(model, data.warm_start, data.classes)
    return model


def warm_pretrained(config: TrainConfig, data: TrainingData) -> bool:
    """Whether a pretrained model starts from a bundle's weights (``imgclf update`` of a probe or tail run).

    The trunk is pretrained and frozen, so the old images' kept
    activations stay valid; the tail and head go on from the bundle's.
    """
    return bool(config.pretrained) and data.warm_start is not None


def _normalise_from_data(model: nn.Module, config: TrainConfig, data: TrainingData) -> None:
    """The training images' mean and std as the data's normalisation; FastNet's whitening initialised on them."""
    train = data.rows["train"]  # rows are sorted by class: a strided sample covers every class
    picked = train[np.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).astype(np.int64)]
    sample = data.pixels[np.unique(picked)].astype(np.float32) / 255.0
    data.mean = tuple(float(v) for v in sample.mean(axis=(0, 1, 2)))
    data.std = tuple(max(float(v), 1e-3) for v in sample.std(axis=(0, 1, 2)))
    if hasattr(model, "init_whitening") and not config.pretrained:
        # also on resume: it decides which weights are frozen; the checkpoint then sets their values
        images = torch.from_numpy(sample).permute(0, 3, 1, 2)
        model.init_whitening((images - torch.tensor(data.mean)[:, None, None])  # type: ignore[operator]  # FastNet's own method
                             / torch.tensor(data.std)[:, None, None])


def placed(model: nn.Module, config: TrainConfig, world: World, device: torch.device) -> nn.Module:
    """The model on ``device`` in its memory format, its BatchNorm synchronised across ranks with ``--sync-bn``."""
    if config.sync_bn and world.is_distributed:  # BatchNorm statistics of the global batch, not the share
        if device.type != "cuda":
            raise ImgclfError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); drop it on CPUs, "
                              "where each process's BatchNorm sees its share of the batch")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]  # torch takes memory_format; Module.to's hint omits it


def embedding_weights(config: TrainConfig) -> str | None:
    """The pretrained weights' name that (with the model) keys the embedding cache; None without known weights."""
    if not config.pretrained:
        return None
    found = weights_fingerprint(config.weights) or pretrained_source(config.model or "") or config.weights
    return str(found) if found else None


def regularisation_args(config: TrainConfig) -> dict[str, float]:
    """``--dropout`` / ``--drop-path`` as the model's own constructor arguments (training only: no weights change)."""
    from imgclf.models.registry import OWN_MODELS

    args: dict[str, float] = {}
    own = (config.model or "") in OWN_MODELS
    if config.dropout is not None:
        args["dropout" if own else "drop_rate"] = config.dropout
    if config.drop_path is not None:
        if own:
            raise ImgclfError(f"--drop-path: {config.model} has no stochastic depth; it works with timm models "
                              "(resnet, efficientnet, convnext, vit)")
        args["drop_path_rate"] = config.drop_path
    return args
