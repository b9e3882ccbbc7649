"""The torch engine as the contract sees it (:class:`~imgclf.engines.contract.Engine`): what it holds, and
the calls :mod:`imgclf.training` makes; the work is in the package's other modules (see the package doc)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf import distributed
from imgclf.config import TrainConfig, parse_duration
from imgclf.data.augment_presets import augment_config
from imgclf.data.batches import BatchLoader
from imgclf.deploy.bundle import BundleInfo, write_bundle
from imgclf.engines import budget
from imgclf.engines.budget import Budget, Clock, StageClock
from imgclf.engines.callbacks import Callback
from imgclf.engines.checkpoint import load_checkpoint
from imgclf.engines.contract import FitResult, Stage, TrainingData, class_weights, plan_stages, split_loader
from imgclf.engines.linear_probe import supports_linear_probe
from imgclf.engines.lookahead import Lookahead
from imgclf.engines.tail import ActivationLoader, TailStage
from imgclf.engines.torch_engine import loop, planning
from imgclf.engines.torch_engine.model import create_model_for, embedding_weights, placed, warm_pretrained
from imgclf.engines.torch_engine.probe import LinearProbe
from imgclf.engines.torch_engine.progress import RunProgress
from imgclf.engines.torch_engine.tricks import new_ema
from imgclf.errors import ImgclfError
from imgclf.models.device import choose_device, choose_precision
from imgclf.runs import RunDirectory

log = logging.getLogger(__name__)


class TorchEngine:
    """Owns the model, the current stage's optimiser, EMA, the loaders and the run's progress; ``fit`` runs the plan.

    ``clock`` is what every budget reading and epoch time is measured on
    (default :data:`imgclf.engines.budget.CLOCK`).
    """

    def __init__(self, config: TrainConfig, run: RunDirectory, clock: Clock | None = None) -> None:
        self.config = config
        self.run = run
        self.now: Clock = clock or budget.CLOCK
        self.device = choose_device(config.device)
        self.precision = choose_precision(config.precision, self.device)
        self.world = distributed.current_world()
        self.machine = f"{self.device.type} {self.precision}" + (
            f" x {self.world.size} processes" if self.world.is_distributed else "")
        self.checkpoint: dict[str, Any] | None = None
        self.progress = RunProgress()
        self.budget: Budget | None = None  # set when --time-budget starts counting
        self.ema: nn.Module | None = None
        self.lookahead: Lookahead | None = None
        self.tail: TailStage | None = None
        self.warm_pretrained = False  # a pretrained model started from a bundle's weights (imgclf update)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stage_clock = StageClock.of(1)  # the current stage's schedule, re-planned by a time budget
        self.forward: Callable[[torch.Tensor], torch.Tensor]  # the current stage's step module
        self.optimizer: torch.optim.Optimizer  # the current stage's, with its schedule (loop sets both)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR
        self.train_loader: BatchLoader | ActivationLoader  # images, or the tail's kept activations

    # ----------------------------------------------------------------- the contract
    def build(self, data: TrainingData, resume: bool) -> bool:
        """The model (and, with ``resume``, the run's last checkpoint); whether a checkpoint was loaded."""
        self.data, config = data, self.config
        if resume and self.run.last_checkpoint.exists():
            self.checkpoint = load_checkpoint(self.run.last_checkpoint)
            log.info("resuming %s at epoch %d", self.run.path, len(self.checkpoint["history"]) + 1)
        elif resume:  # stopped before the first checkpoint (e.g. while decoding): start over with the saved split
            log.info("%s has no checkpoint yet; starting its training from the beginning", self.run.path)
        torch.manual_seed(config.seed)
        self.model = placed(create_model_for(config, data, self.checkpoint), config, self.world, self.device)
        self.warm_pretrained = warm_pretrained(config, data)
        self.head = self.model.get_classifier()  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it
        # what the architecture itself keeps fixed (e.g. FastNet's whitening filters) stays fixed in every stage
        self.trainable = {id(parameter): parameter.requires_grad for parameter in self.model.parameters()}
        # the probe stage becomes one logistic-regression fit on cached embeddings where it can
        self.probe = LinearProbe(self, embedding_weights(config),
                                 config.linear_probe and supports_linear_probe(self.head))
        weights = class_weights(data, config)
        self.class_weights = weights.to(self.device) if weights is not None else None
        if config.strategy == "tail":  # None when its activations would not fit in memory: the probe alone
            self.tail = TailStage.plan(self.model, config, data, self.world.is_distributed,
                                       self.probe.frozen_identity(), self.probe.train_views())
            if self.tail is None and self.warm_pretrained:  # the cache keys pretrained features, not the run's tail's
                raise ImgclfError("update of a tail run needs the old and new images' activations in memory, and "
                                  "they would not fit; retrain on the old and new images with imgclf train")
        self._adopt(config)
        return self.checkpoint is not None

    def fit_to_budget(self, seconds: float) -> TrainConfig:
        """Epochs that fit ``seconds``, from the measured speed of a few steps of each stage (rank 0's decides)."""
        self.budget = Budget.start(seconds, self.now)  # the measurement is part of the budget
        self._adopt(distributed.broadcast_from_main(planning.budget_config(self, self.budget)))
        return self.config

    def fit(self, callbacks: list[Callback]) -> FitResult:
        """Run every stage from where ``build`` left off (:func:`.loop.fit`)."""
        return loop.fit(self, callbacks)

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def kept_features(self, split: str) -> np.ndarray | None:
        """A tail's: its kept activations through the shipped tail (the model itself, unless an EMA copy ships)."""
        if self.tail is None or self.ema is not None or not len(self.data.rows.get(split, ())):
            return None
        return self.tail.tuned_features(split)

    def write_bundle(self, info: BundleInfo, directory: Path) -> Path:
        return write_bundle(info, self.evaluated_model().state_dict(), directory)

    # ----------------------------------------------------------------- what the modules share
    def _adopt(self, config: TrainConfig) -> None:
        """Stages, augmentation and loaders for ``config`` (again after the budget changed its epochs)."""
        self.config = config
        self.stages = [stage for stage in plan_stages(config) if stage.trainable != "tail" or self.tail is not None]
        self.augment = augment_config(config.augment or "none", mixup=config.mixup, cutmix=config.cutmix)
        self.train_loader = split_loader(self.data, config, "train", self.augment, True, device=self.device,
                                         world=self.world)
        # every full batch has this many images (a ragged last one is dropped, or there is only one batch)
        self.global_batch = min(config.batch_size or 1, len(self.data.rows["train"]))
        if self.global_batch < self.world.size:
            raise ImgclfError(f"--batch-size {self.global_batch} is smaller than the {self.world.size} processes "
                              "that share each batch; use a batch of at least one image per process")
        self.has_val = len(self.data.rows.get("val", [])) > 0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def evaluated_model(self) -> nn.Module:
        """The model validation scores and the bundle ship: the EMA with ``--ema``, else the trained one."""
        return self.ema if self.ema is not None else self.model

    def measure_step_seconds(self, stage: Stage, steps: int = 4, low_res: bool = False) -> float:
        """Seconds per training step of ``stage``, measured on a few batches (benchmarks/cifar10_throughput.py)."""
        return planning.measure_step_seconds(self, stage, steps, low_res)

    def shipped_model(self) -> nn.Module:
        """The evaluated model with the best epoch's weights (this run's, or a resumed run's best checkpoint)."""
        model = self.evaluated_model()
        weights = self.best_weights
        if weights is None and self.run.best_checkpoint.exists():
            weights = load_checkpoint(self.run.best_checkpoint)["model"]
        if weights is not None:
            model.load_state_dict(weights)
        return model

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as a checkpoint dict (tensors, numbers, strings, lists)."""
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.stage_clock.state_dict(),
            "budget_spent": None if self.budget is None else self.budget.spent(),
            "normalisation": {"mean": list(self.data.mean), "std": list(self.data.std)},
            **self.progress.state_dict(),  # position, history, best
        }

    def restore(self, resume: dict[str, Any] | None) -> None:
        """The weights (and EMA) a checkpoint saved, and what the run had spent of its time budget."""
        if self.config.ema:
            self.ema = new_ema(self.model)
        if resume is None:
            return
        self.model.load_state_dict(resume["model"])
        if self.ema is not None and resume["ema"] is not None:
            self.ema.load_state_dict(resume["ema"])
        if self.config.time_budget:  # the budget goes on from what the run had spent of it
            spent = resume.get("budget_spent") or sum(row["seconds"] for row in self.progress.history)
            self.budget = Budget.start(parse_duration(self.config.time_budget), self.now, float(spent))

    def restore_stage(self, resume: dict[str, Any]) -> None:
        """The resumed stage's optimiser, schedule, loss scaler and lookahead, as the checkpoint left them."""
        schedule = resume.get("schedule")
        if schedule is not None and schedule["since_step"] > 0:
            self.stage_clock.load_state_dict(schedule)  # a re-planned stage goes on as re-planned
        try:
            self.optimizer.load_state_dict(resume["optimizer"])
        except ValueError as error:  # torch: a different number or size of parameter groups
            raise ImgclfError(f"{self.run.last_checkpoint}: its optimiser state does not fit this version's "
                              f"parameter groups ({error}); it was written by another imgclf version: finish the "
                              "run with that version, or train again with --overwrite") from None
        self.scheduler.load_state_dict(resume["scheduler"])
        self.scaler.load_state_dict(resume["scaler"])
        if self.lookahead is not None and resume.get("lookahead") is not None:
            self.lookahead.load_state_dict(resume["lookahead"])
