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

from imgclf.data.augment_presets import PRESETS
from imgclf.errors import ImgclfError

STRATEGIES = ("auto", "scratch", "probe", "finetune", "two-stage")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTS = ("none", "auto")
MONITORS = ("val_accuracy", "val_loss")
RESIZE_POLICIES = ("squash", "crop", "pad")
BACKENDS = ("torch", "tensorflow")


@dataclass
class TrainConfig:
    """Every choice a training run makes. Field names are the option names everywhere."""

    # data
    data: str = ""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    group_by: str | None = None
    image_size: int | None = None
    resize: str | None = None
    grayscale: bool = False
    max_pixels: int | None = None
    workers: int | None = None
    # model
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: bool | None = None
    weights: str | None = None
    strategy: str = "auto"
    probe_epochs: float | None = None
    linear_probe: bool = True
    backbone_lr_scale: float = 0.1
    # optimisation
    epochs: float | None = None
    time_budget: str | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    l1: float = 0.0  # L1 penalty on weights (not norms and biases), added to the loss
    dropout: float | None = None  # before the classifier: timm's drop_rate (tutorial-cnn's dropout)
    drop_path: float | None = None  # stochastic depth: timm's drop_path_rate
    bias_lr_scale: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    grad_clip: float | None = None
    ema: bool | None = None
    ema_decay: float = 0.999
    augment: str | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    tta: bool | None = None
    class_weights: str = "none"
    balanced_sampling: bool = False
    early_stopping: int | None = None
    monitor: str = "val_accuracy"
    # machine
    backend: str = "torch"
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    # output
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_names() -> list[str]:
    return [item.name for item in fields(TrainConfig)]


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
    return config


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict[str, Any]": (dict,)}


def _check_types(values: dict[str, Any]) -> None:
    """Each option has the type its field declares (YAML can say ``epochs: ten``)."""
    declared = {item.name: str(item.type) for item in fields(TrainConfig)}
    for name, value in values.items():
        kinds = [kind.strip() for kind in declared[name].split("|") if kind.strip() != "None"]
        allowed = tuple(python for kind in kinds for python in _TYPES.get(kind, (object,)))
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if value is not None and (not isinstance(value, allowed) or wrong_bool):
            raise ImgclfError(f"option {name}: expected {' or '.join(kinds)}, got {value!r}")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a config YAML; unknown keys are an error that names them, so typos do not pass silently."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImgclfError(f"--config {path}: no such file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ImgclfError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ImgclfError(f"--config {path}: expected a mapping of option: value, got {type(loaded).__name__}")
    unknown = sorted(set(loaded) - set(config_names()))
    if unknown:
        raise ImgclfError(f"--config {path}: unknown key(s) {', '.join(unknown)}; the keys are the `imgclf train` option names")
    return loaded


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
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
    _choice("strategy", config.strategy, STRATEGIES)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("schedule", config.schedule, SCHEDULES)
    _choice("precision", config.precision, PRECISIONS)
    _choice("device", config.device, DEVICES)
    _choice("backend", config.backend, BACKENDS)
    _choice("class_weights", config.class_weights, CLASS_WEIGHTS)
    _choice("monitor", config.monitor, MONITORS)
    _choice("resize", config.resize, RESIZE_POLICIES)
    _choice("augment", config.augment, tuple(PRESETS))
    for name in ("ema_decay", "momentum"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < 1:
            raise ImgclfError(f"--{name.replace('_', '-')} must be in [0, 1), got {value:g}")
    if config.image_size is not None and not 8 <= config.image_size <= 1024:
        raise ImgclfError(f"--image-size must be between 8 and 1024 pixels, got {config.image_size}")
    if config.batch_size is not None and not 1 <= config.batch_size <= 65536:
        raise ImgclfError(f"--batch-size must be between 1 and 65536, got {config.batch_size}")
    for name in ("epochs", "lr", "ema_decay", "backbone_lr_scale", "bias_lr_scale"):
        _positive(name, getattr(config, name))
    for name in ("dropout", "drop_path"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < 1:
            raise ImgclfError(f"--{name.replace('_', '-')} is a probability in [0, 1), got {value:g}")
    for name in ("weight_decay", "l1", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "probe_epochs"):
        _positive(name, getattr(config, name), strict=False)
    _positive("grad_clip", config.grad_clip)
    if config.early_stopping is not None and config.early_stopping < 1:
        raise ImgclfError(f"--early-stopping is a patience in epochs, at least 1; got {config.early_stopping}")
    if config.label_smoothing is not None and config.label_smoothing >= 1:
        raise ImgclfError(f"--label-smoothing must be below 1, got {config.label_smoothing:g}")
    if config.time_budget is not None:
        parse_duration(config.time_budget)
        if config.epochs is not None:
            raise ImgclfError("give --epochs or --time-budget, not both: the budget decides the number of epochs")
    if config.weights is not None and config.pretrained is False:
        raise ImgclfError("--weights was given with --no-pretrained; drop one of them")


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


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
