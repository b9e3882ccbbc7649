"""The training configuration: one typed record whose names are the CLI flags, YAML keys and Python arguments.

``None`` means "choose for me": :func:`imgclf.recipes.resolve` fills every
such field from the data (image sizes, dataset size) and the model's recipe,
and the resolved config is what a run saves and a dry run prints. This
module is torch-free so that ``imgclf train --help`` and ``--dry-run`` stay
quick.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from imgclf.backends import RECORDS
from imgclf.data.augment_presets import PRESETS
from imgclf.data.corrections import parse_rename_options
from imgclf.errors import ImgclfError, one_line
from imgclf.thresholds import DEFAULT_GOAL, GOAL_HELP, parse_goal

STRATEGIES = ("auto", "scratch", "probe", "finetune", "two-stage", "tail")
OPTIMIZERS = ("adamw", "sgd", "muon")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTS = ("none", "auto")
MONITORS = ("val_accuracy", "val_loss")
RESIZE_POLICIES = ("squash", "crop", "pad")
BACKENDS = tuple(RECORDS)  # the registered backends (imgclf.backends), named once there
TRACKERS = ("mlflow",)  # --track: experiment trackers (imgclf.workflows.tracking)
# --quality: the time budget each name stands for. "default" is also a photo run's budget when none is given.
QUALITY_BUDGETS = {"fast": "1m", "default": "5m", "high": "20m", "best": "60m"}


PANELS = ("Run", "Model", "Data", "Labels", "Schedule", "Machine")  # the groups of `imgclf train --help`, in this order


def option(default: Any, help: str, panel: str, *, choices: tuple[str, ...] = (), factory: Any = None) -> Any:
    """A :class:`TrainConfig` field that also says what the CLI, YAML reading and validation need to know.

    ``help`` is the flag's help (the choices are appended to it), ``panel``
    its group in ``--help``, ``choices`` the values :func:`validate` accepts.
    Adding an option is adding one such field: the ``train`` command, the
    YAML keys and the Python API's keyword arguments follow from it.
    """
    metadata = {"help": help, "panel": panel, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every choice a training run makes. Field names are the option names everywhere."""

    # data
    data: str = option("", "A folder of class folders, a CSV manifest, or cifar10 / cifar100.", "Data")
    val_fraction: float = option(0.1, "Share of train carved out for validation if none given (0: none, train on "
                                      "every image; the last epoch ships).", "Data")
    test_fraction: float = option(0.1, "Share carved out for test if no val/test given.", "Data")
    seed: int = option(0, "Seed for initialisation, batch order and augmentation (not the split: see "
                          "--split-seed), so runs that differ only by it share a split and can be ensembled.", "Data")
    split_seed: int = option(0, "Seed that picks the images carved out for validation and test (and "
                                "cross-validation folds).", "Data")
    group_by: str | None = option(None, "Regex on the path; matching groups stay in one split.", "Data")
    corrections: str | None = option(None, "A corrections CSV (path,action,label,reason,time; imgclf review "
                                           "writes one): its exclusions, relabels and class renames are applied on "
                                           "top of the data, whose files stay as they are.", "Data")
    rename: list[str] = option(None, "Rename (or merge) a class: OLD=NEW, repeatable; the same as a rename row in "
                                     "--corrections.", "Data", factory=list)
    image_size: int | None = option(None, "Input side in pixels.", "Data")
    resize: str | None = option(None, "How images reach the input size (crop: centre crop); default: crop with "
                                      "pretrained weights, else squash.", "Data", choices=RESIZE_POLICIES)
    grayscale: bool = option(False, "Train on one grey channel.", "Data")
    max_pixels: int | None = option(None, "Refuse images with more pixels.", "Data")
    workers: int | None = option(None, "Decoding processes (default: CPU count).", "Data")
    # model
    model: str | None = option(None, "Model name (imgclf models lists them); default chosen from the data.", "Model")
    model_args: dict[str, Any] = option(None, "Model argument KEY=VALUE, repeatable (e.g. widths=[32,64,64]).", "Model",
                                        factory=dict)
    pretrained: bool | None = option(None, "Start from pretrained weights.", "Model")
    ensemble: str | None = option(None, "Train one tail model per MODEL@SIZE (comma-separated, e.g. "
                                        "tf_efficientnet_lite0@224,tf_efficientnet_lite2@260) on the same split and "
                                        "combine them by soft voting: one bundle. --quality "
                                        "high and best choose one where it pays.", "Model")
    weights: str | None = option(None, "Weights file for --pretrained: .safetensors or .pth (torch), no-top .h5 "
                                       "(tensorflow).", "Model")
    strategy: str = option("auto", "What trains: everything from scratch, the head only (probe), everything "
                                   "(finetune), a probe then fine-tuning (two-stage), or a probe then the trunk's "
                                   "last blocks on cached activations (tail).", "Model", choices=STRATEGIES)
    tail_blocks: int = option(1, "With --strategy tail: how many of the trunk's last blocks fine-tune (with its "
                                 "head convolution and the classifier).", "Model")
    probe_epochs: float | None = option(None, "Epochs of --epochs given to the probe stage in two-stage (one fit with "
                                              "the linear probe).", "Model")
    linear_probe: bool = option(True, "Fit the probe stage by logistic regression on cached embeddings (default) "
                                      "instead of gradient descent.", "Model")
    probe_c: float | None = option(None, "The linear probe's C (inverse L2 strength on standardised embeddings); "
                                         "default: chosen by cross-validation on train.", "Model")
    backbone_lr_scale: float = option(0.1, "Backbone learning rate relative to the head when fine-tuning.", "Model")
    # optimisation
    epochs: float | None = option(None, "Epochs (fractions allowed).", "Schedule")
    time_budget: str | None = option(None, "Train to a wall-clock budget, e.g. 5m; fits the schedule.", "Schedule")
    quality: str | None = option(None, "A time budget by name: fast 1 minute, default 5, high 20, best 60 (on "
                                       "pretrained photos the planner trains the most accurate plan that fits; "
                                       "see docs/guides/quality.md).", "Schedule", choices=tuple(QUALITY_BUDGETS))
    batch_size: int | None = option(None, "Images per step.", "Schedule")
    optimizer: str | None = option(None, "Optimiser (sgd with Nesterov momentum; muon: Muon for the backbone's "
                                         "filters, that SGD for the rest).", "Schedule", choices=OPTIMIZERS)
    muon_lr: float | None = option(None, "Learning rate of Muon's filter updates (--optimizer muon).", "Schedule")
    lr: float | None = option(None, "Peak learning rate.", "Schedule")
    momentum: float | None = option(None, "SGD momentum / AdamW beta1.", "Schedule")
    weight_decay: float | None = option(None, "Weight decay (not on norms and biases).", "Schedule")
    l1: float = option(0.0, "L1 penalty on weights (not norms and biases), added to the loss.", "Schedule")
    dropout: float | None = option(None, "Dropout before the classifier (timm's drop_rate; tutorial-cnn's dropout).",
                                   "Model")
    drop_path: float | None = option(None, "Stochastic depth rate (timm's drop_path_rate).", "Model")
    bias_lr_scale: float | None = option(None, "Learning-rate multiplier for norm layers' parameters.", "Schedule")
    schedule: str | None = option(None, "Learning-rate schedule.", "Schedule", choices=SCHEDULES)
    warmup_epochs: float | None = option(None, "Linear warm-up length.", "Schedule")
    label_smoothing: float | None = option(None, "Label smoothing.", "Schedule")
    grad_clip: float | None = option(None, "Clip the gradient norm to this.", "Schedule")
    ema: bool | None = option(None, "Keep an exponential moving average of the weights.", "Schedule")
    ema_decay: float = option(0.999, "EMA decay per step.", "Schedule")
    lookahead: bool | None = option(None, "airbench's lookahead: every 5 steps pull the weights towards a slow "
                                          "average of themselves.", "Schedule")
    whitening_bias_epochs: float | None = option(None, "fastnet: epochs its whitening layer's bias trains before "
                                                       "it is frozen (default: all).", "Schedule")
    low_res: int | None = option(None, "Progressive resizing: train the first --low-res-epochs with every batch "
                                       "downscaled to this side in pixels, then at --image-size.", "Schedule")
    low_res_epochs: float | None = option(None, "Epochs trained at --low-res (default: half of --epochs).",
                                          "Schedule")
    augment: str | None = option(None, "Augmentation preset.", "Data", choices=tuple(PRESETS))
    mixup: float = option(0.0, "Mixup Beta alpha (0 = off).", "Data")
    cutmix: float = option(0.0, "CutMix Beta alpha (0 = off).", "Data")
    tta: bool | None = option(None, "Flip test-time augmentation in evaluation and predict.", "Schedule")
    tta_shift: int | None = option(None, "With --tta, also average over the image shifted by this many pixels "
                                         "(0: flips only).", "Schedule")
    tta_zoom: float | None = option(None, "With --tta, also the centre crop of this share of each side, zoomed back "
                                          "to the input size, and its mirror: training views of the probe and tail, "
                                          "and TTA views (0: none).", "Schedule")
    class_weights: str = option("none", "Loss weights per class (auto: inverse frequency).", "Data",
                                choices=CLASS_WEIGHTS)
    balanced_sampling: bool = option(False, "Draw classes equally often.", "Data")
    positive: str | None = option(None, "The positive class of a binary decision (default: with two classes, the "
                                  "second in sorted order).", "Labels")
    threshold_for: str = option(DEFAULT_GOAL, f"Where binary and multi-label models decide yes, chosen on val: {GOAL_HELP}.",
                                "Labels")
    label_depth: int | None = option(None, "Train on category paths (animals/dog/puppy) cut to this many levels.",
                                     "Labels")
    early_stopping: int | None = option(None, "Stop after this many epochs without improvement.", "Schedule")
    monitor: str = option("val_accuracy", "What early stopping and the best checkpoint watch.", "Schedule",
                          choices=MONITORS)
    # machine
    backend: str = option("torch", "Training framework (tensorflow: Keras 3; pip install 'imgclf[tensorflow]').",
                          "Machine", choices=BACKENDS)
    device: str = option("auto", "Where to train.", "Machine", choices=DEVICES)
    precision: str = option("auto", "Arithmetic precision.", "Machine", choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the model.", "Machine")
    channels_last: bool = option(True, "Channels-last memory layout.", "Machine")
    sync_bn: bool = option(False, "SyncBatchNorm: BatchNorm statistics over the global batch in a run of several "
                           "CUDA processes (torchrun, --nproc); nothing changes in one process.", "Machine")
    # output
    out: str | None = option(None, "Run directory (default: runs/<data name>).", "Run")
    track: str | None = option(None, "Log the run to an experiment tracker: mlflow (to MLFLOW_TRACKING_URI, else "
                                     "./mlflow.db; pip install 'imgclf[track]').", "Run", choices=TRACKERS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_names() -> list[str]:
    return [item.name for item in fields(TrainConfig)]


def with_split_seed(values: dict[str, Any]) -> dict[str, Any]:
    """A recorded run's options (config.yaml, model.json) with ``split_seed`` set for a run older than the option.

    Such a run carved its validation and test images with ``--seed``, so its
    split seed is its seed: read so, its split is made again the same way
    (cross-validation of its bundle, its config.yaml reused). A new run
    records ``split_seed`` itself, and a user's own YAML is not recorded:
    there a missing option is its default, 0, as on the command line.
    """
    return values if "split_seed" in values else {**values, "split_seed": values.get("seed", 0)}


def make_config(config_file: str | Path | None = None, **options: Any) -> TrainConfig:
    """A config from a YAML file (optional) overlaid with explicit options; names are checked."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_yaml(Path(config_file)))
    unknown = sorted(set(options) - set(config_names()))
    if unknown:
        raise ImgclfError(f"unknown training option(s) {', '.join(unknown)}; see `imgclf train --help` for the names")
    values.update({name: value for name, value in options.items() if value is not None})
    values = {name: os.fspath(value) if isinstance(value, os.PathLike) else value for name, value in values.items()}
    _check_types(values)
    config = TrainConfig(**values)
    validate(config)
    config.time_budget = budget_of(config)  # one field says the budget, whichever option named it
    return config


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict[str, Any]": (dict,),
          "list[str]": (list,)}


def _check_types(values: dict[str, Any]) -> None:
    """Each option has the type its field declares (YAML can say ``epochs: ten``)."""
    declared = {item.name: str(item.type) for item in fields(TrainConfig)}
    for name, value in values.items():
        kinds = [kind.strip() for kind in declared[name].split("|") if kind.strip() != "None"]
        allowed = tuple(python for kind in kinds for python in _TYPES.get(kind, (object,)))
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if value is not None and (not isinstance(value, allowed) or wrong_bool):
            raise ImgclfError(f"option {name}: expected {' or '.join(kinds)}, got {value!r}")


def load_yaml_file(path: Path, option: str) -> Any:
    """The YAML document in ``path`` (``--config``, ``--space``), or a one-line error naming ``option`` and the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImgclfError(f"{option} {path}: no such file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ImgclfError(f"{option} {path}: not valid YAML ({one_line(error)})") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a config YAML; unknown keys are an error that names them, so typos do not pass silently."""
    loaded = load_yaml_file(path, "--config")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ImgclfError(f"--config {path}: expected a mapping of option: value, got {type(loaded).__name__}")
    unknown = sorted(set(loaded) - set(config_names()))
    if unknown:
        raise ImgclfError(f"--config {path}: unknown key(s) {', '.join(unknown)}; the keys are the `imgclf train` option names")
    return loaded


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if allowed and value is not None and value not in allowed:
        raise ImgclfError(f"--{name.replace('_', '-')} '{value}' is not one of {', '.join(allowed)}")


def _positive(name: str, value: float | None, minimum: float = 0.0, strict: bool = True) -> None:
    if value is None:
        return
    bad = value <= minimum if strict else value < minimum
    if bad:
        relation = "above" if strict else "at least"
        raise ImgclfError(f"--{name.replace('_', '-')} must be {relation} {minimum:g}, got {value:g}")


def validate(config: TrainConfig) -> None:
    """Reject impossible values with a message naming the option (sizes, fractions, choices)."""
    for item in fields(config):
        _choice(item.name, getattr(config, item.name), item.metadata.get("choices", ()))
    for name in ("ema_decay", "momentum"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < 1:
            raise ImgclfError(f"--{name.replace('_', '-')} must be in [0, 1), got {value:g}")
    if config.image_size is not None and not 8 <= config.image_size <= 1024:
        raise ImgclfError(f"--image-size must be between 8 and 1024 pixels, got {config.image_size}")
    if config.batch_size is not None and not 1 <= config.batch_size <= 65536:
        raise ImgclfError(f"--batch-size must be between 1 and 65536, got {config.batch_size}")
    for name in ("epochs", "lr", "ema_decay", "backbone_lr_scale", "bias_lr_scale", "muon_lr", "probe_c"):
        _positive(name, getattr(config, name))
    for name in ("dropout", "drop_path"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < 1:
            raise ImgclfError(f"--{name.replace('_', '-')} is a probability in [0, 1), got {value:g}")
    for name in ("weight_decay", "l1", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "probe_epochs",
                 "whitening_bias_epochs", "low_res_epochs"):
        _positive(name, getattr(config, name), strict=False)
    if config.low_res is not None and not 8 <= config.low_res < (config.image_size or 1025):
        raise ImgclfError(f"--low-res is the side of the early epochs' images, from 8 pixels to below --image-size "
                          f"({config.image_size or 'the data'}); got {config.low_res}")
    if config.low_res_epochs is not None and config.low_res is None:
        raise ImgclfError("--low-res-epochs needs --low-res (the side those epochs train at), e.g. --low-res 24")
    _positive("grad_clip", config.grad_clip)
    _positive("tta_shift", config.tta_shift, strict=False)
    if config.tta_zoom is not None and config.tta_zoom != 0 and not 0.5 <= config.tta_zoom < 1:
        raise ImgclfError(f"--tta-zoom is the share of each side the zoomed view keeps, in [0.5, 1) (0.875 is "
                          f"usual; 0 for none); got {config.tta_zoom:g}")
    if config.early_stopping is not None and config.early_stopping < 1:
        raise ImgclfError(f"--early-stopping is a patience in epochs, at least 1; got {config.early_stopping}")
    parse_goal(config.threshold_for)
    if config.label_depth is not None and config.label_depth < 1:
        raise ImgclfError(f"--label-depth is a number of category levels, at least 1; got {config.label_depth}")
    if config.label_smoothing is not None and config.label_smoothing >= 1:
        raise ImgclfError(f"--label-smoothing must be below 1, got {config.label_smoothing:g}")
    _check_budget(config)
    ensemble_members(config.ensemble)
    if config.tail_blocks < 1:
        raise ImgclfError(f"--tail-blocks is a number of the trunk's last blocks, at least 1; got {config.tail_blocks}")
    if config.strategy == "tail":
        images_only = [name for name in ("mixup", "cutmix") if getattr(config, name)]
        images_only += ["balanced_sampling"] * config.balanced_sampling
        if images_only:
            names = ", ".join(f"--{name.replace('_', '-')}" for name in images_only)
            raise ImgclfError(f"--strategy tail trains on cached activations, one per image and view: {names} "
                              "cannot act there; drop it, or use --strategy two-stage")
    if any(not isinstance(value, str) for value in config.rename):
        raise ImgclfError(f"option rename: expected a list of OLD=NEW texts, got {config.rename!r}")
    parse_rename_options(config.rename)
    if config.weights is not None and config.pretrained is False:
        raise ImgclfError("--weights was given with --no-pretrained; drop one of them")


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def _check_budget(config: TrainConfig) -> None:
    """--time-budget or --quality (one of them), a readable duration, and not with --epochs."""
    if config.quality is not None and config.time_budget not in (None, QUALITY_BUDGETS.get(config.quality)):
        raise ImgclfError(f"give --quality or --time-budget, not both: --quality {config.quality} means "
                          f"--time-budget {QUALITY_BUDGETS[config.quality]}")
    budget = budget_of(config)
    if budget is not None:
        parse_duration(budget)
        if config.epochs is not None:
            raise ImgclfError(f"give --epochs or {'--quality' if config.quality else '--time-budget'}, not both: "
                              "the budget decides the number of epochs")


def ensemble_members(text: str | None) -> list[tuple[str, int]]:
    """``--ensemble``'s (model, input size) pairs, in order; [] when not given."""
    if not text:
        return []
    members = []
    for part in text.split(","):
        model, at, size = part.strip().partition("@")
        if not model or not at or not size.isdigit() or not 8 <= int(size) <= 1024:
            raise ImgclfError(f"--ensemble '{part.strip()}' should be MODEL@SIZE with a side of 8 to 1024 pixels, "
                              "e.g. tf_efficientnet_lite0@224")
        members.append((model, int(size)))
    if len(members) < 2:
        raise ImgclfError(f"--ensemble needs two or more MODEL@SIZE members, got {len(members)}; for one model use "
                          "--model and --image-size")
    return members


def budget_of(config: TrainConfig) -> str | None:
    """The run's time budget: ``--time-budget``, or the one its ``--quality`` names."""
    return config.time_budget or (QUALITY_BUDGETS[config.quality] if config.quality else None)


def parse_duration(text: str) -> float:
    """Seconds in '90s', '5m', '1h30m', '1.5h' or a bare number of seconds."""
    match = _DURATION.match(text)
    if not text.strip() or not match or not any(match.groups()):
        raise ImgclfError(f"--time-budget '{text}' is not a duration; write e.g. 90s, 5m or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ImgclfError(f"--time-budget '{text}' must be longer than zero")
    return total
