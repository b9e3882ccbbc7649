"""What every engine shares: the data it trains on, the stages a strategy becomes, the result, the protocol.

An engine (:mod:`imgclf.engines.torch_engine`, :mod:`imgclf.engines.keras_engine`)
takes a :class:`TrainingData` (the decoded uint8 cache and its targets) and a
resolved :class:`~imgclf.config.TrainConfig`, runs :func:`plan_stages`, and
returns a :class:`FitResult` whose history rows are ``metrics.csv``'s. The
rules that must not differ between frameworks are written here once: class
weights, warm-up length, which epoch is the best (:class:`BestEpoch`) and
the plain validation loss and accuracy (:func:`score_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.config import TrainConfig
from imgclf.data.batches import BatchLoader
from imgclf.distributed import ALONE, World

if TYPE_CHECKING:
    from imgclf.deploy.bundle import BundleInfo
    from imgclf.engines.callbacks import Callback


@dataclass
class TrainingData:
    """Decoded pixels plus, per split, the rows that decoded and their targets."""

    pixels: np.ndarray  # (N, H, W, C) uint8: the cache's memory map, or a data.shards.PixelRows indexed alike
    rows: dict[str, np.ndarray]  # split name -> row indices into pixels
    targets: torch.Tensor  # (N,) class index, or (N, K) multi-hot floats for multi-label data
    classes: list[str]
    multilabel: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    paths: list[Path] = field(default_factory=list)  # row -> its image file, for per-image caches
    warm_start: Path | None = None  # a bundle whose weights a from-scratch model starts from (imgclf update)

    def split_targets(self, split: str) -> torch.Tensor:
        return self.targets[torch.from_numpy(self.rows[split])]

    def class_counts(self, split: str) -> torch.Tensor:
        """Images per class in ``split`` (single-label data)."""
        return torch.bincount(self.split_targets(split), minlength=len(self.classes))


def split_loader(data: TrainingData, config: TrainConfig, split: str, augment: Any, shuffle: bool,
                 batch_size: int | None = None, device: torch.device | str = "cpu",
                 world: World = ALONE) -> BatchLoader:
    """Batches of one split, as every engine reads them (balanced sampling, dropping a ragged last batch).

    ``world``: each batch is this rank's share of the global batch (see :class:`BatchLoader`).
    """
    rows = data.rows[split]
    weights = None
    if split == "train" and config.balanced_sampling and not data.multilabel:
        counts = data.class_counts(split).numpy()
        weights = 1.0 / counts[data.split_targets(split).numpy()]
    assert config.batch_size is not None  # resolved by the recipe before training
    return BatchLoader(data.pixels, rows, data.split_targets(split), batch_size or config.batch_size, augment,
                       data.mean, data.std, shuffle=shuffle, drop_last=shuffle and len(rows) > config.batch_size,
                       seed=config.seed, device=device, sample_weights=weights, world=world)


def class_weights(data: TrainingData, config: TrainConfig) -> torch.Tensor | None:
    """``--class-weights auto``: inverse class frequency (single-label), negatives per positive (multi-label)."""
    if config.class_weights != "auto":
        return None
    if data.multilabel:
        positives = data.split_targets("train").sum(dim=0).clamp(min=1)
        return (len(data.rows["train"]) - positives).clamp(min=1) / positives
    counts = data.class_counts("train").float().clamp(min=1)
    return counts.sum() / (len(counts) * counts)


@dataclass(frozen=True)
class Stage:
    name: str  # "train", "probe", "finetune" or "tail"
    epochs: float
    trainable: str  # "all", "head" or "tail" (the trunk's last blocks and the head: engines/tail.py)
    backbone_lr_scale: float = 1.0
    lr_scale: float = 1.0  # of the whole stage, on top of the backbone's


# Fine-tuning after a probe starts from a trained head at a low loss: at the full learning rate its
# first steps undo what the probe found (flowers: val accuracy fell from 91% to 76%), as LP-FT
# (Kumar et al., 2022) describes. So that stage runs at a tenth of --lr.
FINETUNE_AFTER_PROBE_LR_SCALE = 0.1


def plan_stages(config: TrainConfig) -> list[Stage]:
    """What a strategy means as a sequence of stages."""
    assert config.epochs is not None  # resolved by the recipe before training
    if config.strategy == "probe":
        return [Stage("probe", config.epochs, "head")]
    if config.strategy == "finetune":
        return [Stage("finetune", config.epochs, "all", config.backbone_lr_scale)]
    if config.strategy == "two-stage":
        assert config.probe_epochs is not None  # resolved by the recipe before training
        probe = float(config.probe_epochs)
        return [Stage("probe", probe, "head"), Stage("finetune", config.epochs - probe, "all",
                                                     config.backbone_lr_scale, FINETUNE_AFTER_PROBE_LR_SCALE)]
    if config.strategy == "tail":  # the probe is one fit (epoch 1); the tail trains for the epochs left
        return [Stage("probe", 1.0, "head"), Stage("tail", config.epochs - 1.0, "tail")]
    return [Stage("train", config.epochs, "all")]


def warmup_steps(config: TrainConfig, stage: Stage, stages: list[Stage], steps_per_epoch: int, total: int) -> int:
    """Warm-up steps of ``stage`` (``total`` steps long): ``--warmup-epochs``, short after a probe."""
    warmup = min(total - 1, round((config.warmup_epochs or 0.0) * steps_per_epoch))
    if stage.name == "finetune" and len(stages) > 1:
        warmup = min(warmup, total // 10)  # the head is already trained: a short ramp is enough
    return max(warmup, 0)


LOWER_IS_BETTER = frozenset({"val_loss"})  # the --monitor values a smaller number of is better


def monitor_direction(monitor: str) -> Literal["maximize", "minimize"]:
    """``"maximize"`` or ``"minimize"`` (Optuna's spelling): which way ``--monitor`` improves."""
    return "minimize" if monitor in LOWER_IS_BETTER else "maximize"


def oriented(value: float, monitor: str) -> float:
    """``value`` of ``--monitor`` turned so that higher is better (a loss negated)."""
    return -value if monitor in LOWER_IS_BETTER else value


def monitor_score(row: dict[str, Any], monitor: str) -> float:
    """Higher is better: ``--monitor`` of an epoch's row, or its number when there is no validation split.

    Without validation, training losses of different stages (smoothing,
    mixup, a probe fit) are not comparable, so the latest epoch is the best.
    """
    value = row.get(monitor)
    if value is None:
        return float(row["epoch"])
    return oriented(value, monitor)


@dataclass
class BestEpoch:
    """The best epoch so far by ``--monitor`` over the whole run (every stage): the one whose weights ship.

    Every engine keeps one, updates it with each epoch's row and saves it
    in its checkpoint as :meth:`state_dict` (``epoch``, ``score``, ``stale``).
    """

    epoch: int = 0  # 1-based; 0 before the first epoch
    score: float | None = None  # monitor_score of that epoch
    stale: int = 0  # epochs since it (early stopping's patience counts these)

    def update(self, row: dict[str, Any], monitor: str) -> bool:
        """Take epoch ``row`` into account; whether it is the new best."""
        score = monitor_score(row, monitor)
        if self.score is None or score > self.score:
            self.epoch, self.score, self.stale = int(row["epoch"]), score, 0
            return True
        self.stale += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score, "stale": self.stale}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BestEpoch:
        return cls(max(int(state["epoch"]), 0), state["score"], int(state["stale"]))


def score_logits(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> dict[str, float]:
    """The plain loss (no class weights, no smoothing) and accuracy, comparable across epochs, stages and runs."""
    if not len(targets):
        return {"loss": 0.0, "accuracy": 0.0}
    if multilabel:
        loss = float(F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype)))
    else:
        loss = float(F.cross_entropy(logits, targets))
    return {"loss": loss, "accuracy": float(correct_predictions(logits, targets, multilabel)) / len(targets)}


def correct_predictions(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """How many rows are right: the argmax class (soft targets: their argmax), or every label for multi-label."""
    if multilabel:
        return ((logits > 0) == (targets > 0.5)).all(dim=1).sum()
    labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
    return (logits.argmax(dim=1) == labels).sum()


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    interrupted: bool
    seconds: float
    model: Any  # the weights to ship: the best validation score's (restore-best)
    trained_epochs: float | None = None  # fractions of epochs included (a time budget's plan ends mid-epoch)


class Engine(Protocol):
    """One framework's training, as :mod:`imgclf.training` drives it; registered in :mod:`imgclf.engines.registry`.

    The engine is made with ``(config, run)`` before the data is decoded (so
    a bad ``--device`` fails at once); ``build`` takes the decoded data, makes
    (or, on resume, reloads) the model and sets ``data.mean`` / ``data.std``
    to the normalisation it expects, before any batch is read.
    """

    config: TrainConfig
    machine: str  # for the start line: "cpu bf16", "tensorflow cpu fp32"
    warm_pretrained: bool  # a pretrained model started from a bundle's weights (imgclf update)

    def build(self, data: TrainingData, resume: bool) -> bool:
        """The model: fresh (pretrained weights, data statistics) or the run's last checkpoint with ``resume``.

        Returns whether a checkpoint was loaded.
        """
        ...

    def fit_to_budget(self, seconds: float) -> TrainConfig:
        """The config whose schedule fits ``seconds``, from the measured time of a few steps of each stage.

        The engine adopts the returned config (its stages change length).
        """
        ...

    def fit(self, callbacks: list[Callback]) -> FitResult:
        """Run every stage (from the checkpoint ``build`` loaded), firing ``callbacks``' events."""
        ...

    def parameter_count(self) -> int:
        """Learnable values (BatchNorm running statistics excluded), the figure compare checks across backends."""
        ...

    def kept_features(self, split: str) -> np.ndarray | None:
        """The shipped model's pooled features of ``split``'s images (``rows[split]`` order) from what the engine
        kept in memory, without a pass of the images; None when it kept nothing that gives them."""
        ...

    def write_bundle(self, info: BundleInfo, directory: Path) -> Path:
        """The shipped model as a bundle at ``directory``."""
        ...

