"""Defaults chosen from the data: which model, image size, batch size, epochs and optimiser recipe.

Every field the user left as ``None`` in a :class:`~imgclf.config.TrainConfig`
is filled here, in one readable place, from a few facts about the data
(:class:`DataFacts`) and the chosen model's recipe. What the user set is
never changed, only checked for combinations that cannot work.

The recipes:

- ``fastnet`` (small images, from scratch): airbench94's recipe. SGD with
  Nesterov momentum 0.85, a learning rate of 11.5 per 1024 examples of a
  summed loss (here expressed for a mean loss, so it scales with the batch),
  a 64x learning rate on BatchNorm biases, label smoothing 0.2, airbench's
  augmentation (2 px reflected shifts at 32 px, alternating flips), a
  triangular one-cycle schedule, lookahead, the whitening bias frozen after
  30% of the epochs and flip + 1-px shift TTA, from 20,000 training images
  on (``airbench_scale``; smaller sets keep EMA, ``light`` shifts and flip
  TTA). Evidence: together +1.05 CIFAR-10 test points over the recipe before
  them, at airbench94's own code's level (``benchmarks/results/airbench_reference.json``,
  ``imgclf-old-recipe-4ep`` against ``imgclf-new-defaults-4ep``). A
  ``--time-budget`` of at most 10 minutes trains widths 32/128/128 (see
  ``SHORT_BUDGET_WIDTHS``). Measured and not taken as defaults: Muon and
  ``--low-res 24``, even with the defaults at best
  (``benchmarks/results/cifar10_epochs.json``, ``muon``, ``low-res-24``). Fitting on all training images
  (``--val-fraction 0``) is the user's choice, not a default: val is where
  calibration, thresholds and early stopping are measured.
- ``tutorial-cnn``: the seed tutorial exactly: Adam at 1e-3, constant
  learning rate, batch 32, no augmentation, 10 epochs.
- pretrained timm backbones (torch, single-label): the probe alone, fitted on
  cached embeddings of each image and its mirror image, with flip TTA;
  fine-tuning did not pay on CPUs (``benchmarks/results/flowers.json``, ``lite0-5m``), so it runs
  only when asked for (``--strategy two-stage`` or ``finetune``). With no
  ``--model``, :mod:`imgclf.engines.planner` picks the trunks and views that
  fit the time budget. Keras and multi-label data: probe then fine-tune.
  The fine-tuning recipe: AdamW, cosine decay with a short warm-up, label
  smoothing 0.1, standard augmentation.
- timm architectures from scratch: AdamW 2e-3 per 256 examples, cosine,
  label smoothing 0.1, standard augmentation, longer training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imgclf.backends import backend_record
from imgclf.config import TrainConfig, ensemble_members, parse_duration
from imgclf.errors import ImgclfError
from imgclf.paths import absolute_path
from imgclf.runs import RunDirectory

SMALL_IMAGE_SIDE = 64  # at or below this median side, images are "small" (CIFAR-like)
PHOTO_MODEL = "tf_efficientnet_lite0"
PRETRAINED_IMAGE_SIZE = 224  # what ImageNet weights are usually trained and evaluated at
SMALL_MODEL = "fastnet"
# --strategy tail (engines/tail.py): AdamW at this peak rate for the tail blocks and the head alike, a cosine
# schedule after a short warm-up, these many epochs after the probe (10 beat 5 over three seeds on flowers:
# benchmarks/results/transfer.json, "tail")
TAIL_LR = 1e-3
TAIL_WEIGHT_DECAY = 0.05
TAIL_WARMUP_EPOCHS = 0.3
TAIL_EPOCHS = 10
PHOTO_SCRATCH_SIZE = 96
PHOTO_SCRATCH_WIDTHS = (32, 64, 128, 256)
# Small images on a short --time-budget: fastnet at a quarter of airbench94's width trains about three times the
# epochs of the full width, which wins up to 10 minutes; from there the full width has epochs enough to be the
# better spend, and narrower still does not pay (benchmarks/results/cifar10_widths.json, "5m-*" cases).
SHORT_BUDGET_S = 10 * 60
SHORT_BUDGET_WIDTHS = (32, 128, 128)
# airbench94: lr 11.5 per 1024 examples with a summed loss and momentum 0.85.
AIRBENCH_KILOSTEP = 1024 * (1 + 1 / (1 - 0.85))
AIRBENCH_LR_PER_EXAMPLE = 11.5 / AIRBENCH_KILOSTEP
AIRBENCH_WEIGHT_DECAY = 0.0153 / 11.5  # decoupled decay per step, expressed for torch's coupled SGD
AIRBENCH_MIN_IMAGES = 20_000  # training images from which fastnet takes airbench's whole recipe (airbench_scale)
WHITENING_BIAS_SHARE = 0.3  # airbench94 trains the whitening layer's bias for 3 of its 9.9 epochs
LOW_RES_SHARE = 0.5  # --low-res without --low-res-epochs: the first half of the epochs at the low side


@dataclass(frozen=True)
class DataFacts:
    """What the defaults depend on, measured on the training split."""

    train_images: int
    median_side: int  # median of max(width, height) over a sample of images
    multilabel: bool = False


def uses_photo_plan(config: TrainConfig, facts: DataFacts) -> bool:
    """Whether the default pretrained-photo recipe (the planner's trunks and views) applies to this run."""
    return (config.model is None and config.strategy == "auto" and config.pretrained is not False
            and config.weights is None and backend_record(config.backend).photo_planner and not facts.multilabel
            and facts.median_side > SMALL_IMAGE_SIDE)


def probes_only(config: TrainConfig, pretrained: bool, multilabel: bool) -> bool:
    """Whether ``--strategy auto`` means the probe alone: pretrained single-label runs of a backend whose probe is one fit."""
    return pretrained and backend_record(config.backend).linear_probe and not multilabel


def airbench_scale(facts: DataFacts) -> bool:
    """Whether fastnet gets airbench's lookahead, augmentation, whitening-bias freeze and shifted TTA.

    Measured on CIFAR-10's 45,000 images (on a 10,000-image subset lookahead
    alone did not pay: ``benchmarks/results/cifar10_pieces.json``, ``lookahead``); on a few dozen images a run has a
    handful of steps, where lookahead's end on the slow copy pulls the weights
    back towards their start and the alternating flips trained a 60-image
    set less reliably, so small sets keep EMA, ``light`` and flip TTA.
    """
    return facts.median_side <= SMALL_IMAGE_SIDE and facts.train_images >= AIRBENCH_MIN_IMAGES


def model_family(model: str) -> str:
    """'fastnet', 'tutorial-cnn' or 'timm': which recipe a model name gets."""
    return model if model in ("fastnet", "tutorial-cnn") else "timm"


def resolve(config: TrainConfig, facts: DataFacts,
            pretrained_source: Callable[[str], str | None]) -> TrainConfig:
    """Fill every ``None`` of ``config`` from ``facts``; ``pretrained_source(name)`` says if weights exist here."""
    small = facts.median_side <= SMALL_IMAGE_SIDE
    model = config.model
    if model is None:
        photo_weights = config.weights or pretrained_source(PHOTO_MODEL)
        model = PHOTO_MODEL if not small and config.pretrained is not False and photo_weights else SMALL_MODEL
    family = model_family(model)
    pretrained = config.pretrained
    if pretrained is None:
        pretrained = config.weights is not None or (family == "timm" and pretrained_source(model) is not None)
    strategy = config.strategy
    if strategy == "auto":
        strategy = ("probe" if probes_only(config, pretrained, facts.multilabel) else "two-stage") if pretrained \
            else "scratch"
    if strategy != "scratch" and not pretrained:
        raise ImgclfError(f"--strategy {strategy} needs pretrained weights; add --pretrained (or --weights FILE), "
                          "or use --strategy scratch")
    model_args = dict(config.model_args)
    if family == "fastnet" and "widths" not in model_args:
        if not small:
            model_args["widths"] = list(PHOTO_SCRATCH_WIDTHS)
        elif config.time_budget and parse_duration(config.time_budget) <= SHORT_BUDGET_S:
            model_args["widths"] = list(SHORT_BUDGET_WIDTHS)
    image_size = config.image_size or _image_size(family, pretrained, small, facts)
    batch_size = config.batch_size or _batch_size(family, image_size, facts.train_images)
    recipe = _recipe(family, pretrained, batch_size, facts)
    if strategy == "probe" and probes_only(config, pretrained, facts.multilabel):
        recipe["tta"] = True  # the probe trains on mirror images too; predictions average both views
    if strategy == "tail":  # mirror images are the tail's augmentation too: predictions average both views
        recipe.update(lr=TAIL_LR, weight_decay=TAIL_WEIGHT_DECAY, schedule="cosine", warmup_epochs=TAIL_WARMUP_EPOCHS,
                      tta=not facts.multilabel)
    if config.optimizer is not None and config.optimizer != recipe["optimizer"]:
        recipe.update(_optimizer_defaults(config.optimizer, batch_size))  # the recipe's rates belong to its optimizer
    epochs = config.epochs or _default_epochs(config, strategy, family, pretrained, image_size, facts)
    # pretrained weights saw centre crops (timm's eval transform); from scratch, squashing keeps the whole image
    recipe["resize"] = "crop" if pretrained else "squash"
    filled: dict[str, Any] = {name: value for name, value in recipe.items() if getattr(config, name) is None}
    if strategy == "two-stage" and config.probe_epochs is None:
        filled["probe_epochs"] = min(max(1.0, round(epochs / 3)), epochs / 2)
    if family == "fastnet" and config.warmup_epochs is None:
        filled["warmup_epochs"] = round(0.23 * epochs, 2)  # airbench's triangle peaks at 23% of training
    if family == "fastnet" and config.whitening_bias_epochs is None and airbench_scale(facts):
        filled["whitening_bias_epochs"] = round(WHITENING_BIAS_SHARE * epochs, 2)
    if config.low_res is not None and config.low_res_epochs is None:
        filled["low_res_epochs"] = round(LOW_RES_SHARE * epochs, 2)
    if config.low_res is not None and config.low_res >= image_size:
        raise ImgclfError(f"--low-res {config.low_res} is not below the image size {image_size}; give a smaller "
                          "side (e.g. three quarters of it) or drop --low-res")
    resolved = replace(config, model=model, model_args=model_args, pretrained=pretrained, strategy=strategy,
                       image_size=image_size, batch_size=batch_size, epochs=float(epochs), **filled)
    if strategy == "tail" and epochs <= 1:
        raise ImgclfError(f"--epochs {epochs:g} leaves the tail no epochs after the probe (one fit, "
                          f"counted as epoch 1); give at least 2 (default {1 + TAIL_EPOCHS})")
    if resolved.probe_epochs is not None and strategy == "two-stage" and resolved.probe_epochs >= epochs:
        raise ImgclfError(f"--probe-epochs {resolved.probe_epochs:g} leaves no fine-tuning within --epochs "
                          f"{epochs:g}; lower it or raise --epochs")
    return resolved


def _image_size(family: str, pretrained: bool, small: bool, facts: DataFacts) -> int:
    if family == "timm" and pretrained:
        return PRETRAINED_IMAGE_SIZE
    if small:
        return max(8, int(round(facts.median_side / 8)) * 8)
    if family == "tutorial-cnn":
        return 180  # the seed tutorial's flowers size
    return PHOTO_SCRATCH_SIZE if family == "fastnet" else 160


def _batch_size(family: str, image_size: int, train_images: int) -> int:
    if family == "tutorial-cnn":
        return 32
    if family == "fastnet":
        wanted = 512 if image_size <= SMALL_IMAGE_SIDE else 128
    else:
        wanted = 32 if image_size >= 160 else 128
    # small datasets still need several steps per epoch for the schedule to mean anything
    cap = 2 ** max(3, int(math.log2(max(train_images // 8, 1))))
    return max(1, min(wanted, cap))


def _default_epochs(config: TrainConfig, strategy: str, family: str, pretrained: bool, image_size: int,
                    facts: DataFacts) -> float:
    """The tail's (its probe's fit counted as epoch 1); one for a probe that is one logistic-regression fit; else
    by data size."""
    if strategy == "tail":
        return float(1 + TAIL_EPOCHS)
    if strategy == "probe" and config.linear_probe and family == "timm" and probes_only(config, pretrained, False):
        return 1.0  # timm heads are linear: the probe is one fit, per label on multi-label data too
    return _epochs(family, pretrained, image_size, facts.train_images)


def _epochs(family: str, pretrained: bool, image_size: int, train_images: int) -> float:
    """Epochs scaled to dataset size: roughly a fixed amount of compute, within sensible bounds."""
    if family == "tutorial-cnn":
        return 10.0
    if family == "fastnet":
        views = 450_000 * (32 / image_size) ** 2  # airbench: ~10 epochs of 45k images at 32 px
        return float(min(60, max(8, round(views / max(train_images, 1)))))
    if pretrained:
        return float(min(20, max(4, round(12_000 / max(train_images, 1)))))
    return float(min(100, max(10, round(300_000 / max(train_images, 1)))))


def _recipe(family: str, pretrained: bool, batch_size: int, facts: DataFacts) -> dict[str, object]:
    smoothing = 0.0 if facts.multilabel else None
    if family == "fastnet":
        # linear scaling down to batch 512 (airbench's regime), square-root scaling below it, so small
        # datasets with small batches still get a learning rate that moves the weights
        lr = AIRBENCH_LR_PER_EXAMPLE * (batch_size if batch_size >= 512 else math.sqrt(512 * batch_size))
        averaging = (dict(ema=False, lookahead=True, augment="airbench", tta_shift=1) if airbench_scale(facts)
                     else dict(ema=True, lookahead=False, augment="light", tta_shift=0))
        return dict(optimizer="sgd", lr=lr, momentum=0.85,
                    weight_decay=AIRBENCH_WEIGHT_DECAY, bias_lr_scale=64.0, schedule="onecycle",
                    label_smoothing=0.2 if smoothing is None else smoothing, tta=True, **averaging)
    if family == "tutorial-cnn":
        return dict(optimizer="adamw", lr=1e-3, momentum=0.9, bias_lr_scale=1.0, weight_decay=0.0,
                    schedule="constant", warmup_epochs=0.0,
                    label_smoothing=0.0, ema=False, augment="none", tta=False)
    common = dict(optimizer="adamw", momentum=0.9, bias_lr_scale=1.0, schedule="cosine", label_smoothing=0.1 if smoothing is None else smoothing,
                  ema=False, augment="standard", tta=False)
    if pretrained:
        return dict(common, lr=1e-3, weight_decay=0.01, warmup_epochs=0.3)
    return dict(common, lr=2e-3 * batch_size / 256, weight_decay=0.05, warmup_epochs=1.0)


def _optimizer_defaults(optimizer: str, batch_size: int) -> dict[str, object]:
    """Learning rate, momentum, decay and bias scale for an optimizer the model's recipe does not use."""
    if optimizer == "sgd":
        return dict(optimizer="sgd", lr=0.1 * batch_size / 256, momentum=0.9, weight_decay=5e-4, bias_lr_scale=1.0)
    return dict(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.05, bias_lr_scale=1.0)


ENSEMBLE_RUNS = "runs"  # --ensemble: the folder of the run directory holding each member's run


def member_configs(config: TrainConfig, run_dir: Path) -> list[TrainConfig]:
    """``--ensemble``'s members' options: the run's own, with the member's trunk and size, the tail, the run's split
    file as data (every member trains on one split) and a run folder in ``run_dir/runs``."""
    run_dir = Path(absolute_path(run_dir))  # the members' paths hold wherever a later command runs
    configs = []
    for index, (model, size) in enumerate(ensemble_members(config.ensemble)):
        name = f"{index}-{model.removeprefix('tf_efficientnet_')}-{size}"
        configs.append(replace(config, ensemble=None, model=model, image_size=size, pretrained=True,
                               strategy="tail", tta=True, time_budget=None, quality=None,
                               corrections=None, rename=[],  # the split file has them applied already
                               data=str(RunDirectory(run_dir).split_file), out=str(run_dir / ENSEMBLE_RUNS / name)))
    return configs


def check_members(config: TrainConfig, multilabel: bool, val_images: int) -> None:
    """What an ensemble of tails cannot be, refused before any member trains."""
    if config.model is not None or config.image_size is not None:
        raise ImgclfError(f"give --ensemble or --{'model' if config.model else 'image-size'}, not both: --ensemble "
                          "names each member's model and size (MODEL@SIZE)")
    if val_images < 2:
        raise ImgclfError(f"an ensemble weighs its members on the validation split, which has {val_images} "
                          "image(s) here; keep --val-fraction above 0 (or give a val/ folder)")
    if config.strategy not in ("auto", "tail"):
        raise ImgclfError(f"--ensemble members train with --strategy tail; drop --strategy {config.strategy}")
    if multilabel:
        raise ImgclfError("--ensemble combines single-label models; this data is multi-label: train one model")
    models = sorted({model for model, _ in ensemble_members(config.ensemble)})
    if config.weights is not None and len(models) > 1:
        raise ImgclfError(f"--weights is one file, but --ensemble names {len(models)} models ({', '.join(models)}); "
                          "give members of one model, or drop --weights to use each model's installed weights")
