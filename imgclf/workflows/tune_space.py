"""The search space of ``imgclf tune``: defaults per recipe family, or a YAML file of TrainConfig names.

A space maps a :class:`~imgclf.config.TrainConfig` field to an Optuna
distribution: ``{low, high, log, step}`` for a number, ``{choices: [...]}``
for anything. Every bound and choice is checked with the same validation a
training option gets, so a space that cannot train fails before the first
trial, in one line that names the file and the entry.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.config import TrainConfig, config_names, load_yaml_file, make_config
from imgclf.errors import ImgclfError
from imgclf.recipes import model_family

if TYPE_CHECKING:
    import optuna

Space = dict[str, dict[str, Any]]  # name -> {low, high, log, step} | {choices}
AUGMENTS = ["light", "standard", "strong"]
KERAS_REFUSES = ("l1", "dropout", "drop_path")  # the Keras backend has no such option


def default_space(resolved: TrainConfig, given: set[str]) -> Space:
    """Sensible ranges around the recipe ``resolved`` came from; names set on the command line stay fixed.

    Rates are searched on a log scale around the recipe's own value, since
    fastnet's learning rate scales with the batch and a fixed range would
    miss it.
    """
    family = model_family(resolved.model or "")
    lr = resolved.lr or 1e-3
    decay = resolved.weight_decay or 1e-4
    space: Space = {
        "lr": {"low": lr / 4, "high": lr * 4, "log": True},
        "weight_decay": {"low": decay / 10, "high": decay * 10, "log": True},
        "label_smoothing": {"low": 0.0, "high": 0.3},
        "augment": {"choices": AUGMENTS},
    }
    if family == "timm" and resolved.pretrained:
        space["dropout"] = {"low": 0.0, "high": 0.5}
        if resolved.strategy == "two-stage" and resolved.epochs:
            space["probe_epochs"] = {"low": 0.0, "high": resolved.epochs / 2}
    else:
        epochs = resolved.epochs or 10
        space.update({
            "l1": {"choices": [0.0, 1e-5, 1e-4]},
            "mixup": {"choices": [0.0, 0.2, 0.4]},
            "cutmix": {"choices": [0.0, 0.5, 1.0]},
            "epochs": {"low": max(1.0, round(epochs / 2)), "high": float(round(epochs * 1.5)), "step": 1.0},
        })
        if family != "fastnet":
            space["dropout"] = {"low": 0.0, "high": 0.5}
    if resolved.time_budget:
        space.pop("epochs", None)  # the budget decides the epochs
    if resolved.backend == "tensorflow":
        for name in KERAS_REFUSES:
            space.pop(name, None)
    return {name: entry for name, entry in space.items() if name not in given}


def read_space(path: Path, given: set[str]) -> Space:
    """The space in a YAML file, every entry checked (see :func:`check_space`)."""
    loaded = load_yaml_file(path, "--space")
    if not isinstance(loaded, dict) or not loaded:
        raise ImgclfError(f"--space {path}: expected a mapping of option: {{low, high}} or {{choices: [...]}}")
    check_space(loaded, f"--space {path}", given)
    return loaded


def check_space(space: dict[str, Any], origin: str, given: set[str]) -> None:
    """Refuse unknown names, bad bounds and values of the wrong type, naming ``origin`` and the entry."""
    unknown = sorted(set(space) - set(config_names()))
    if unknown:
        raise ImgclfError(f"{origin}: unknown option(s) {', '.join(unknown)}; the names are `imgclf train` options "
                          "(e.g. lr, weight_decay, augment)")
    fixed = sorted(set(space) & given)
    if fixed:
        raise ImgclfError(f"{origin}: {', '.join(fixed)} also given on the command line; search it or fix it, not both")
    kinds = {item.name: str(item.type) for item in fields(TrainConfig)}
    for name, entry in space.items():
        where = f"{origin}: {name}"
        if not isinstance(entry, dict):
            raise ImgclfError(f"{where}: expected {{low, high}} or {{choices: [...]}}, got {entry!r}")
        extra = sorted(set(entry) - {"low", "high", "log", "step", "choices"})
        if extra:
            raise ImgclfError(f"{where}: unknown key(s) {', '.join(extra)}; use low, high, log, step or choices")
        if "choices" in entry:
            if set(entry) != {"choices"} or not isinstance(entry["choices"], list) or not entry["choices"]:
                raise ImgclfError(f"{where}: choices must be a non-empty list, without low/high")
            values = entry["choices"]
        else:
            if "low" not in entry or "high" not in entry:
                raise ImgclfError(f"{where}: give low and high (or choices)")
            if not kinds[name].startswith(("int", "float")):
                raise ImgclfError(f"{where}: a {kinds[name].replace(' | None', '')} option takes choices, not low/high")
            values = [entry["low"], entry["high"]]
        for value in values:
            try:
                make_config(**{name: value})
            except ImgclfError as error:
                raise ImgclfError(f"{where}: {error}") from None
        if "choices" not in entry:
            _check_range(where, entry)


def _check_range(where: str, entry: dict[str, Any]) -> None:
    low, high = entry["low"], entry["high"]
    if low >= high:
        raise ImgclfError(f"{where}: low {low} must be below high {high}")
    if entry.get("log") and low <= 0:
        raise ImgclfError(f"{where}: a log range needs low above 0, got {low}")
    if entry.get("log") and entry.get("step") is not None:
        raise ImgclfError(f"{where}: give log or step, not both")
    if entry.get("step") is not None and not (isinstance(entry["step"], (int, float)) and entry["step"] > 0):
        raise ImgclfError(f"{where}: step must be a positive number, got {entry['step']!r}")


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """The trial's values, one per entry of ``space``; int fields get integer ranges."""
    kinds = {item.name: str(item.type) for item in fields(TrainConfig)}
    values: dict[str, Any] = {}
    for name, entry in space.items():
        log, step = bool(entry.get("log")), entry.get("step")
        if "choices" in entry:
            values[name] = trial.suggest_categorical(name, entry["choices"])
        elif kinds[name].startswith("int"):
            values[name] = trial.suggest_int(name, int(entry["low"]), int(entry["high"]), step=int(step or 1), log=log)
        else:
            values[name] = trial.suggest_float(name, float(entry["low"]), float(entry["high"]), step=step, log=log)
    return values
