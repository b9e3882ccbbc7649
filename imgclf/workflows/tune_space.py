"""The search space of ``imgclf tune``: what the resolved recipe reads, or a YAML file of TrainConfig names.

A space maps a :class:`~imgclf.config.TrainConfig` field to an Optuna
distribution: ``{low, high, log, step}`` for a number, ``{choices: [...]}``
for anything. Every bound and choice is checked with the same validation a
training option gets, so a space that cannot train fails before the first
trial, in one line that names the file and the entry; so does an entry the
resolved recipe never reads (:func:`ignored_options`), which would only
repeat the same trial. The pretrained photo default is the linear probe
alone, so its space is the probe's C, the views, class weights and the
planner's trunks, never the training knobs.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.backends import backend_record
from imgclf.config import CLASS_WEIGHTS, TrainConfig, config_names, load_yaml_file, make_config
from imgclf.errors import ImgclfError
from imgclf.recipes import model_family

if TYPE_CHECKING:
    import optuna

Space = dict[str, dict[str, Any]]  # name -> {low, high, log, step} | {choices}
AUGMENTS = ["light", "standard", "strong"]


# What only gradient descent reads: the linear probe alone (logistic regression on cached embeddings) ignores them.
GRADIENT_OPTIONS = ("lr", "weight_decay", "momentum", "optimizer", "muon_lr", "schedule", "warmup_epochs",
                    "bias_lr_scale", "grad_clip", "label_smoothing", "l1", "dropout", "drop_path", "ema", "ema_decay",
                    "lookahead", "augment", "mixup", "cutmix", "epochs", "batch_size", "balanced_sampling",
                    "early_stopping", "backbone_lr_scale", "probe_epochs", "whitening_bias_epochs")
# Searching one of these changes the recipe itself, so what the fixed recipe ignores says nothing about the trials.
RECIPE_OPTIONS = ("model", "pretrained", "weights", "strategy", "linear_probe", "backend")
# The tail (--strategy tail) sees no new pixels, keeps dropout and BatchNorm in eval mode and learns at the head's rate.
TAIL_IGNORES = ("augment", "mixup", "cutmix", "balanced_sampling", "dropout", "drop_path", "backbone_lr_scale")
TAIL_BLOCKS = [1, 2]  # flowers: 1 block 94.8%, 2 blocks 94.3% at twice the cost (benchmarks/transfer.py --sections tail)
PROBE_C_WIDENING = 3.0  # the searched C spans the probe's own grid, widened by this factor at both ends


def linear_probe_only(resolved: TrainConfig) -> bool:
    """Whether the run is the linear probe alone: one logistic-regression fit, no gradient step at all."""
    return (resolved.strategy == "probe" and resolved.linear_probe and backend_record(resolved.backend).linear_probe
            and bool(resolved.pretrained))


def ignored_options(resolved: TrainConfig) -> dict[str, str]:
    """The options the recipe ``resolved`` never reads, each with why: a trial varying one only repeats another."""
    if linear_probe_only(resolved):
        why = ("the probe alone fits a logistic regression on cached embeddings, no gradient step reads it "
               "(--strategy two-stage fine-tunes)")
        return dict.fromkeys(GRADIENT_OPTIONS, why)
    ignored: dict[str, str] = {}
    if (resolved.strategy not in ("two-stage", "tail") or not resolved.linear_probe
            or not backend_record(resolved.backend).linear_probe):
        ignored["probe_c"] = ("only the linear probe reads it (--strategy probe, two-stage or tail, torch, "
                              "--linear-probe)")
    if resolved.strategy != "two-stage":
        ignored["probe_epochs"] = "only two-stage training splits its epochs between the probe and fine-tuning"
    if resolved.strategy in ("scratch", "probe"):
        ignored["backbone_lr_scale"] = f"--strategy {resolved.strategy} never trains a pretrained backbone"
    if resolved.strategy == "tail":
        ignored.update(dict.fromkeys(TAIL_IGNORES, "the tail trains with the head, in eval mode, on activations "
                                                   "kept from one frozen pass of the plain and mirrored images"))
    else:
        ignored["tail_blocks"] = "only --strategy tail reads it"
    if model_family(resolved.model or "") != "fastnet":
        ignored["whitening_bias_epochs"] = "only fastnet has a whitening layer"
    if resolved.optimizer != "muon":
        ignored["muon_lr"] = "only --optimizer muon reads it"
    if not resolved.tta:
        ignored["tta_shift"] = ignored["tta_zoom"] = "only --tta reads it"
    return ignored


def check_recipe_reads(space: Space, resolved: TrainConfig, origin: str) -> None:
    """Refuse an entry the resolved recipe ignores: every trial would repeat the others at full price.

    Not judged when the space itself searches the recipe (strategy, model,
    ...): an option one recipe ignores may count in another.
    """
    if set(space) & set(RECIPE_OPTIONS):
        return
    ignored = ignored_options(resolved)
    for name in space:
        if name in ignored:
            raise ImgclfError(f"{origin}: {name} changes nothing in this recipe ({resolved.model}, --strategy "
                              f"{resolved.strategy}): {ignored[name]}; drop it from the space or fix a recipe "
                              "that reads it")


def default_space(resolved: TrainConfig, given: set[str], imbalanced: bool = False, multilabel: bool = False) -> Space:
    """What changes the result of the recipe ``resolved`` came from; names set on the command line stay fixed.

    ``imbalanced``: training warns of class imbalance, so class weights
    may pay; ``multilabel``: the probe is one-vs-rest, with its own C grid.
    """
    space = _probe_space(resolved, imbalanced, multilabel) if linear_probe_only(resolved) \
        else _training_space(resolved)
    return {name: entry for name, entry in space.items() if name not in given}


def _probe_space(resolved: TrainConfig, imbalanced: bool, multilabel: bool) -> Space:
    """The probe's C (log scale around its own grid), the views, and class weights.

    Each trial is a fit on embeddings cached per image, trunk and view, so
    after the first trial of a view only the fit and the validation passes
    are paid.
    """
    space: Space = {"probe_c": _probe_c_range(multilabel),
                    "tta": {"choices": [True, False]}}  # mirror images as training rows and in predictions, or not
    if imbalanced:
        space["class_weights"] = {"choices": list(CLASS_WEIGHTS)}
    return space


def _probe_c_range(multilabel: bool) -> dict[str, Any]:
    """The probe's C on a log scale spanning its own cross-validation grid, widened at both ends."""
    from imgclf.engines.linear_probe import LABEL_REGULARISATION_GRID, REGULARISATION_GRID

    grid = LABEL_REGULARISATION_GRID if multilabel else REGULARISATION_GRID
    return {"low": round(grid[0] / PROBE_C_WIDENING, 6), "high": round(grid[-1] * PROBE_C_WIDENING, 6), "log": True}


def planned_options(base: TrainConfig, resolved: TrainConfig, given: set[str]) -> dict[str, Any]:
    """The planner's choice (trunk, size, views) as options every trial starts from.

    The planner picks by forward passes timed on a machine whose load
    varies; timed again in every trial it could change the recipe between
    trials, and no searched value would explain the difference.
    """
    from imgclf.engines.planner import plan_image_size

    if base.model is not None or not resolved.model or plan_image_size(resolved.model) is None:
        return {}
    chosen = {"model": resolved.model, "image_size": resolved.image_size, "tta": resolved.tta,
              "strategy": resolved.strategy, "tail_blocks": resolved.tail_blocks,
              "tta_zoom": resolved.tta_zoom}  # a named trunk alone is probed
    return {name: value for name, value in chosen.items() if name not in given}


def _training_space(resolved: TrainConfig) -> Space:
    """Sensible ranges around the training recipe's own values.

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
    if resolved.strategy == "tail":  # the probe, then the last blocks: seconds an epoch on kept activations
        space.pop("augment")
        epochs = resolved.epochs or 6
        space.update({"probe_c": _probe_c_range(multilabel=False), "tail_blocks": {"choices": TAIL_BLOCKS},
                      "epochs": {"low": 3.0, "high": float(max(4, round(epochs * 2))), "step": 1.0}})
    elif family == "timm" and resolved.pretrained:
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
    for name in backend_record(resolved.backend).refused_options():  # e.g. Keras has no --l1, --mixup, --dropout
        space.pop(name, None)
    return space


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
