"""The PyTorch engine: train a model on a decoded cache, stage by stage, resumable at any batch.

Read it top to bottom like airbench: the data it needs (:class:`TrainingData`),
the stages a strategy becomes (:func:`plan_stages`), then :class:`Trainer`,
whose ``fit`` loops over stages, epochs and batches. Every batch's shuffle,
augmentation, mixup and dropout randomness is seeded by (seed, epoch, batch),
so a run resumed from a checkpoint (taken at an epoch end or on Ctrl-C
mid-epoch) ends with the same weights as an uninterrupted one on a CPU.

A probe stage freezes the backbone including its BatchNorm statistics and
runs it under ``no_grad``: only the classifier learns, and the backward pass
costs nothing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.config import TrainConfig
from imgclf.console import console, training_progress
from imgclf.data.augment import mix_batch
from imgclf.data.augment_presets import PRESETS, augment_config
from imgclf.data.batches import BatchLoader
from imgclf.embeddings.embedder import Embedder, Preprocessing
from imgclf.engines.checkpoint import save_checkpoint
from imgclf.engines.device import autocast
from imgclf.engines.history import history_row, print_epoch
from imgclf.engines.linear_probe import fit_linear_head, load_into_head, supports_linear_probe
from imgclf.engines.optim import build_optimizer, build_scheduler, parameter_groups
from imgclf.runs import RunDirectory


@dataclass
class TrainingData:
    """Decoded pixels plus, per split, the rows that decoded and their targets."""

    pixels: np.ndarray  # (N, H, W, C) uint8
    rows: dict[str, np.ndarray]  # split name -> row indices into pixels
    targets: torch.Tensor  # (N,) class index, or (N, K) multi-hot floats for multi-label data
    classes: list[str]
    multilabel: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    paths: list[Path] = field(default_factory=list)  # row -> its image file, for per-image caches

    def split_targets(self, split: str) -> torch.Tensor:
        return self.targets[torch.from_numpy(self.rows[split])]

    def class_counts(self, split: str) -> torch.Tensor:
        """Images per class in ``split`` (single-label data)."""
        return torch.bincount(self.split_targets(split), minlength=len(self.classes))


def split_loader(data: TrainingData, config: TrainConfig, split: str, augment: Any, shuffle: bool,
                 batch_size: int | None = None, device: torch.device | str = "cpu") -> BatchLoader:
    """Batches of one split, as every engine reads them (balanced sampling, dropping a ragged last batch)."""
    rows = data.rows[split]
    weights = None
    if split == "train" and config.balanced_sampling and not data.multilabel:
        counts = data.class_counts(split).numpy()
        weights = 1.0 / counts[data.split_targets(split).numpy()]
    return BatchLoader(data.pixels, rows, data.split_targets(split), batch_size or config.batch_size, augment,
                       data.mean, data.std, shuffle=shuffle, drop_last=shuffle and len(rows) > config.batch_size,
                       seed=config.seed, device=device, sample_weights=weights)


@dataclass(frozen=True)
class Stage:
    name: str  # "train", "probe" or "finetune"
    epochs: float
    trainable: str  # "all" or "head"
    backbone_lr_scale: float = 1.0
    lr_scale: float = 1.0  # of the whole stage, on top of the backbone's


# Fine-tuning after a probe starts from a trained head at a low loss: at the full learning rate its
# first steps undo what the probe found (flowers: val accuracy fell from 91% to 76%), as LP-FT
# (Kumar et al., 2022) describes. So that stage runs at a tenth of --lr.
FINETUNE_AFTER_PROBE_LR_SCALE = 0.1


def plan_stages(config: TrainConfig) -> list[Stage]:
    """What a strategy means as a sequence of stages."""
    if config.strategy == "probe":
        return [Stage("probe", config.epochs, "head")]
    if config.strategy == "finetune":
        return [Stage("finetune", config.epochs, "all", config.backbone_lr_scale)]
    if config.strategy == "two-stage":
        probe = float(config.probe_epochs)
        return [Stage("probe", probe, "head"), Stage("finetune", config.epochs - probe, "all",
                                                     config.backbone_lr_scale, FINETUNE_AFTER_PROBE_LR_SCALE)]
    return [Stage("train", config.epochs, "all")]


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    interrupted: bool
    seconds: float
    model: nn.Module  # the weights to ship: the best validation score's (restore-best)


@dataclass
class _Position:
    """Where a run is: which stage, the global epoch, the batch within it, and the step within the stage."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    stage_step: int = 0
    epoch_in_stage: int = 0


@dataclass
class _EpochTally:
    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss += float(loss) * count
        self.correct += float(correct)
        self.seen += count

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Trainer:
    """Owns the model, the optimiser of the current stage, EMA and the loaders; ``fit`` runs the plan."""

    def __init__(self, model: nn.Module, data: TrainingData, config: TrainConfig, run: RunDirectory | None,
                 device: torch.device, precision: str, class_weights: torch.Tensor | None = None,
                 embedding_weights: str | None = None) -> None:
        self.config = config
        self.data = data
        self.run = run
        self.device = device
        self.precision = precision
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=memory_format)
        self.head = model.get_classifier()
        # what the architecture itself keeps fixed (e.g. FastNet's whitening filters) stays fixed in every stage
        self._trainable = {id(parameter): parameter.requires_grad for parameter in model.parameters()}
        self._stop_requested = False
        # the probe stage becomes one logistic-regression fit on cached embeddings where it can;
        # ``embedding_weights`` names the pretrained weights, which (with the model) key that cache
        self.embedding_weights = embedding_weights
        self.uses_linear_probe = (config.linear_probe and embedding_weights is not None and not data.multilabel
                                  and supports_linear_probe(self.head))
        self._embedder: Embedder | None = None
        self.class_weights = class_weights.to(device) if class_weights is not None else None
        self.stages = plan_stages(config)
        self.augment = augment_config(config.augment or "none", mixup=config.mixup, cutmix=config.cutmix)
        self.train_loader = self._loader("train", self.augment, shuffle=True)
        self.val_loader = self._loader("val", PRESETS["none"], shuffle=False) if len(data.rows.get("val", [])) else None
        self.ema: nn.Module | None = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.model) if config.compile else self.model)  # type: ignore[assignment]

    # ----------------------------------------------------------------- data
    def _loader(self, split: str, augment: Any, shuffle: bool, batch_size: int | None = None) -> BatchLoader:
        return split_loader(self.data, self.config, split, augment, shuffle, batch_size, self.device)

    # ----------------------------------------------------------------- stages
    def steps_in(self, stage: Stage) -> int:
        return max(1, math.ceil(stage.epochs * len(self.train_loader)))

    def _start_stage(self, stage: Stage) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        head_ids = {id(parameter) for parameter in self.head.parameters()}
        for parameter in self.model.parameters():
            learns = stage.trainable == "all" or id(parameter) in head_ids
            parameter.requires_grad_(learns and self._trainable[id(parameter)])
        groups = parameter_groups(self.model, self.head, self.config, stage.backbone_lr_scale, stage.trainable,
                                  stage.lr_scale)
        optimizer = build_optimizer(groups, self.config)
        total = self.steps_in(stage)
        warmup = min(total - 1, round((self.config.warmup_epochs or 0.0) * len(self.train_loader)))
        if stage.name == "finetune" and len(self.stages) > 1:
            warmup = min(warmup, total // 10)  # the head is already trained: a short ramp is enough
        return optimizer, build_scheduler(optimizer, total, max(warmup, 0), self.config.schedule)

    def _set_train_mode(self, stage: Stage) -> None:
        if stage.trainable == "head":
            self.model.eval()  # frozen backbone: BatchNorm statistics stay as the weights had them
            self.head.train()
            return
        self.model.train()
        if stage.name == "finetune":
            # Pretrained BatchNorm statistics stay frozen while fine-tuning (Keras's transfer-learning
            # advice): small batches of a small dataset would otherwise replace ImageNet's statistics
            # with noisy ones and shift every feature the head was fitted on.
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    # ----------------------------------------------------------------- steps
    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.data.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.class_weights)
        return F.cross_entropy(logits, targets, weight=self.class_weights,
                               label_smoothing=self.config.label_smoothing or 0.0)

    def _correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.data.multilabel:
            hard = targets > 0.5
            return ((logits > 0) == hard).all(dim=1).sum()
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        return (logits.argmax(dim=1) == labels).sum()

    def _train_step(self, stage: Stage, images: torch.Tensor, targets: torch.Tensor, seed: int,
                    optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)  # dropout and drop-path draw from the global generator
        mixed_targets = targets
        if self.augment.mixup > 0 or self.augment.cutmix > 0:
            soft = targets.float() if self.data.multilabel else F.one_hot(targets, len(self.data.classes)).float()
            images, mixed_targets = mix_batch(images, soft, self.augment, torch.Generator().manual_seed(seed))
        with autocast(self.device, self.precision):
            if stage.trainable == "head":
                with torch.no_grad():
                    features = self.model.forward_features(images)
                logits = self.model.forward_head(features)
            else:
                logits = self.forward(images)
        loss = self._loss(logits, mixed_targets)
        objective = loss
        if self.config.l1:  # L1 on the weights this stage trains (matrices and kernels: not norms and biases)
            weights = [p for group in optimizer.param_groups for p in group["params"] if p.ndim > 1]
            objective = loss + self.config.l1 * sum(weight.abs().sum() for weight in weights)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return loss.detach(), self._correct(logits.detach(), targets)

    @torch.no_grad()
    def predict_logits(self, split: str, model: nn.Module | None = None, tta: bool = False) -> torch.Tensor:
        """Logits for every row of ``split`` (no augmentation; flip-averaged with ``tta``)."""
        model = model or self.evaluated_model()
        if not tta and self.backbone_is_embedder():
            # the backbone never changed: its cached embeddings through the head are these logits, in seconds
            head = model.get_classifier()
            features = self.embedder().embed_decoded(self.data.pixels, self.data.rows[split], self.data.paths,
                                                     description=f"Embedding {split}")
            return head(torch.from_numpy(features).to(head.weight)).float().cpu()
        model.eval()
        loader = self._loader(split, PRESETS["none"], shuffle=False, batch_size=2 * self.config.batch_size)
        outputs = []
        for images, _ in loader:
            with autocast(self.device, self.precision):
                logits = model(images).float()
                if tta:
                    logits = 0.5 * (logits + model(images.flip(3)).float())
            outputs.append(logits.cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.data.classes))

    def evaluate(self, split: str, model: nn.Module | None = None, tta: bool = False) -> dict[str, float]:
        logits = self.predict_logits(split, model, tta)
        targets = self.data.split_targets(split)
        # the plain loss (no class weights, no smoothing), comparable across epochs, stages and runs
        if self.data.multilabel:
            loss = float(F.binary_cross_entropy_with_logits(logits, targets))
        else:
            loss = float(F.cross_entropy(logits, targets))
        accuracy = float(self._correct(logits, targets)) / max(len(targets), 1)
        return {"loss": loss, "accuracy": accuracy}

    def evaluated_model(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    def measure_step_seconds(self, stage: Stage, steps: int = 4) -> float:
        """Seconds per training step of ``stage``, measured on a few batches; the model is left as it was."""
        started = time.perf_counter()
        saved = copy.deepcopy(self.model.state_dict())
        optimizer, _ = self._start_stage(stage)
        self._set_train_mode(stage)
        finished_at = []  # step ends, so the gaps include waiting for data as well as computing
        self.train_loader.set_epoch(0)
        for index, (images, targets) in enumerate(_take(self.train_loader, steps + 1)):
            self._train_step(stage, images, targets, index, optimizer)
            finished_at.append(time.perf_counter())
        self.model.load_state_dict(saved)
        if len(finished_at) < 2:
            return finished_at[0] - started if finished_at else 0.0
        return float(np.median(np.diff(finished_at)))

    # ----------------------------------------------------------------- EMA
    def _update_ema(self, stage_step: int, total_steps: int) -> None:
        if self.ema is None:
            return
        # The average spans at most the last ~10% of the stage, so a short run is not shipped with
        # weights from its first steps; early on, the decay warms up to follow fast-moving weights.
        decay = min(self.config.ema_decay, 1 - 10 / max(total_steps, 20), (1 + stage_step) / (10 + stage_step))
        with torch.no_grad():
            for averaged, current in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                if averaged.dtype.is_floating_point:
                    averaged.lerp_(current, 1 - decay)
                else:
                    averaged.copy_(current)

    # ----------------------------------------------------------------- state
    def _state(self, position: _Position, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LambdaLR, history: list[dict[str, Any]],
               best: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": vars(position).copy(),
            "normalisation": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "history": history,
            "best": best,
        }

    # ----------------------------------------------------------------- the loop
    def fit(self, resume: dict[str, Any] | None = None,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
        """Run every stage; ``resume`` is a checkpoint dict from :func:`load_checkpoint`."""
        started = time.perf_counter()
        position = _Position()
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"score": None, "epoch": -1, "stale": 0}
        if self.config.ema:
            self.ema = copy.deepcopy(self.model).eval()
            for parameter in self.ema.parameters():
                parameter.requires_grad_(False)
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            if self.ema is not None and resume["ema"] is not None:
                self.ema.load_state_dict(resume["ema"])
            position = _Position(**resume["position"])
            history, best = list(resume["history"]), dict(resume["best"])
        budget = _BudgetGuard(self.config, already=sum(row["seconds"] for row in history))
        outcome = "finished"
        with _deferred_interrupt(self):
            for stage_index in range(position.stage, len(self.stages)):
                stage = self.stages[stage_index]
                optimizer, scheduler = self._start_stage(stage)
                if resume is not None and stage_index == position.stage:
                    optimizer.load_state_dict(resume["optimizer"])
                    scheduler.load_state_dict(resume["scheduler"])
                    self.scaler.load_state_dict(resume["scaler"])
                else:
                    position = _Position(stage=stage_index, epoch=position.epoch)
                if stage.trainable == "head" and self.uses_linear_probe and position.stage_step == 0:
                    row = self._linear_probe(stage, position)
                    history.append(row)
                    self._after_epoch(row, best, position, optimizer, scheduler, history)
                    if on_epoch:
                        on_epoch(row)
                    if self._stop_requested:  # the checkpoint after the probe is already written
                        outcome = "interrupted"
                        break
                    continue
                try:
                    outcome = self._run_stage(stage, position, optimizer, scheduler, history, best, budget, on_epoch)
                except _Interrupted:
                    outcome = "interrupted"
                    if self.run is not None:
                        save_checkpoint(self._state(position, optimizer, scheduler, history, best),
                                        self.run.last_checkpoint)
                if outcome != "finished":
                    break
        shipped = self._restore_best()
        return FitResult(history=history, best_epoch=int(best["epoch"]),
                         stopped_early=outcome == "stopped", interrupted=outcome == "interrupted",
                         seconds=time.perf_counter() - started, model=shipped)

    def _run_stage(self, stage: Stage, position: _Position, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LambdaLR, history: list[dict[str, Any]],
                   best: dict[str, Any], budget: _BudgetGuard,
                   on_epoch: Callable[[dict[str, Any]], None] | None) -> str:
        """Epochs of one stage from ``position``; 'finished' or 'stopped' (early stopping, time budget)."""
        total_steps = self.steps_in(stage)
        epochs_in_stage = math.ceil(total_steps / len(self.train_loader))
        while position.stage_step < total_steps:
            row = self._run_epoch(stage, position, optimizer, scheduler, total_steps, epochs_in_stage)
            history.append(row)
            self._after_epoch(row, best, position, optimizer, scheduler, history)
            if on_epoch:
                on_epoch(row)
            if self._stop_requested:
                raise _Interrupted
            if self._should_stop_early(best):
                return "stopped"
            more_to_do = position.stage_step < total_steps or self.stages[-1] is not stage
            if more_to_do and budget.exhausted(row["seconds"]):
                console.print("[yellow]time budget reached; stopping after this epoch[/]")
                return "stopped"
        return "finished"

    def _probe_splits(self) -> list[str]:
        return ["train"] + (["val"] if self.val_loader is not None else [])

    def embedder(self) -> Embedder:
        """The frozen backbone as an embedder (made once, before any training changes the weights)."""
        if self._embedder is None:
            config = self.config
            preprocessing = Preprocessing(config.image_size or 0, config.resize or "squash",
                                          1 if config.grayscale else 3, self.data.mean, self.data.std)
            self._embedder = Embedder(self.model, config.model or "", self.embedding_weights or "", preprocessing,
                                      config.model or "", config.model_args, self.device, self.precision,
                                      batch_size=2 * (config.batch_size or 32))
        return self._embedder

    def backbone_is_embedder(self) -> bool:
        """Whether the whole run is one linear probe, so the trained backbone is exactly the embedder's."""
        return self.uses_linear_probe and all(stage.trainable == "head" for stage in self.stages)

    def embeddings_cached(self) -> bool:
        """Whether the linear probe will find every embedding it needs on disk (it then costs seconds)."""
        from imgclf.embeddings.store import image_key

        store = self.embedder().store
        keys = [image_key(self.data.paths[row]) for split in self._probe_splits() for row in self.data.rows[split]]
        return bool(store.get(keys)[1].all())

    def _linear_probe(self, stage: Stage, position: _Position) -> dict[str, Any]:
        """The whole probe stage as one fit on cached embeddings; returns its history row."""
        started = time.perf_counter()
        splits = self._probe_splits()
        features = {}
        for split in splits:
            features[split] = self.embedder().embed_decoded(self.data.pixels, self.data.rows[split], self.data.paths,
                                                            description=f"Embedding {split}")
        labels = {split: self.data.split_targets(split).numpy() for split in splits}
        fit = fit_linear_head(features["train"], labels["train"], features.get("val"), labels.get("val"),
                              len(self.data.classes), balanced=self.config.class_weights == "auto")
        load_into_head(self.head, fit)
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        train_logits = torch.from_numpy(features["train"] @ fit.weight.T + fit.bias).float()
        seconds = time.perf_counter() - started
        train_loss = float(F.cross_entropy(train_logits, torch.from_numpy(labels["train"])))
        row = self._epoch_row(position, stage, train_loss, fit.train_accuracy, 0.0, seconds,
                              len(self.data.rows["train"]))
        console.print(f"probe: logistic regression on cached embeddings, C={fit.regularisation:g}, "
                      f"fitted in {fit.seconds:.1f} s")
        position.epoch += 1
        position.stage_step = self.steps_in(stage)
        position.epoch_in_stage = 1
        return row

    def _epoch_row(self, position: _Position, stage: Stage, train_loss: float, train_accuracy: float, lr: float,
                   seconds: float, images: int) -> dict[str, Any]:
        """One line of metrics.csv (the validation scores measured now) for the epoch at ``position``."""
        scores = self.evaluate("val") if self.val_loader is not None else {"loss": None, "accuracy": None}
        return history_row(position.epoch + 1, stage.name, train_loss, train_accuracy, scores["loss"],
                           scores["accuracy"], lr, seconds, images)

    def _run_epoch(self, stage: Stage, position: _Position, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int,
                   epochs_in_stage: int) -> dict[str, Any]:
        self._set_train_mode(stage)
        loader = self.train_loader
        loader.set_epoch(position.epoch, start_batch=position.batch)
        steps = min(len(loader), total_steps - position.stage_step + position.batch)
        tally = _EpochTally()
        description = f"{stage.name} {position.epoch_in_stage + 1}/{epochs_in_stage}"
        with training_progress() as progress:
            task = progress.add_task(description, total=steps, completed=position.batch, loss=0.0, accuracy=0.0,
                                     speed=0.0)
            for images, targets in _take(loader, steps - position.batch):
                seed = _seed_for(self.config.seed, position.epoch, position.batch, 7)
                loss, correct = self._train_step(stage, images, targets, seed, optimizer)
                scheduler.step()
                position.batch += 1
                position.stage_step += 1
                self._update_ema(position.stage_step, total_steps)
                tally.add(loss, correct, len(images))
                elapsed = time.perf_counter() - tally.started
                progress.update(task, advance=1, loss=tally.mean_loss, accuracy=tally.accuracy,
                                speed=tally.seen / max(elapsed, 1e-9))
                if self._stop_requested and position.batch < steps:
                    raise _Interrupted  # mid-epoch; at an epoch's end the row and checkpoint come first
        seconds = time.perf_counter() - tally.started
        row = self._epoch_row(position, stage, tally.mean_loss, tally.accuracy, optimizer.param_groups[-1]["lr"],
                              seconds, tally.seen)
        position.epoch += 1
        position.epoch_in_stage += 1
        position.batch = 0
        return row

    def _after_epoch(self, row: dict[str, Any], best: dict[str, Any], position: _Position,
                     optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                     history: list[dict[str, Any]]) -> None:
        monitor = self.config.monitor
        value = row.get(monitor)
        if value is None:
            # No validation split: training losses of different stages (smoothing, mixup, a probe fit)
            # are not comparable, so the latest epoch is the best one.
            score = float(row["epoch"])
        else:
            score = -value if monitor == "val_loss" else value
        if best["score"] is None or score > best["score"]:
            best.update(score=score, epoch=row["epoch"], stale=0)
            if self.run is not None:
                save_checkpoint({"format": 1, "model": self.evaluated_model().state_dict(), "epoch": row["epoch"]},
                                self.run.best_checkpoint)
            self._best_weights = copy.deepcopy(self.evaluated_model().state_dict())
        else:
            best["stale"] += 1
        if self.run is not None:
            save_checkpoint(self._state(position, optimizer, scheduler, history, best), self.run.last_checkpoint)
            self.run.write_metrics(history)
        print_epoch(row, best["epoch"] == row["epoch"])

    def _should_stop_early(self, best: dict[str, Any]) -> bool:
        patience = self.config.early_stopping
        if patience is not None and best["stale"] >= patience:
            console.print(f"[yellow]early stopping: no better {self.config.monitor} for {patience} epoch(s); "
                          f"keeping epoch {best['epoch']}[/]")
            return True
        return False

    def _restore_best(self) -> nn.Module:
        model = self.evaluated_model()
        weights = getattr(self, "_best_weights", None)
        if weights is None and self.run is not None and self.run.best_checkpoint.exists():
            from imgclf.engines.checkpoint import load_checkpoint

            weights = load_checkpoint(self.run.best_checkpoint)["model"]
        if weights is not None:
            model.load_state_dict(weights)
        return model


class _BudgetGuard:
    """With ``--time-budget``, stops when one more epoch would overrun the budget by more than 10%.

    The schedule was already fitted to the budget from measured speed; this
    only catches a machine that got slower mid-run.
    """

    def __init__(self, config: TrainConfig, already: float) -> None:
        from imgclf.config import parse_duration

        self.budget = parse_duration(config.time_budget) if config.time_budget else None
        self.started = time.perf_counter() - already

    def exhausted(self, last_epoch_seconds: float) -> bool:
        if self.budget is None:
            return False
        return time.perf_counter() - self.started + last_epoch_seconds > 1.1 * self.budget


def _take(batches: Iterator[Any] | Any, count: int) -> Iterator[Any]:
    """The first ``count`` items, closing the source (and its prefetch thread) early when fewer are wanted."""
    iterator = iter(batches)
    try:
        for _ in range(count):
            try:
                yield next(iterator)
            except StopIteration:
                return
    finally:
        close = getattr(iterator, "close", None)
        if close:
            close()


class _Interrupted(Exception):
    """Ctrl-C arrived; raised between two steps, where the state is consistent and can be saved."""


@contextmanager
def _deferred_interrupt(trainer: Trainer) -> Iterator[None]:
    """The first Ctrl-C asks the loop to stop after the current step; a second one aborts at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        trainer._stop_requested = True
        console.print("[yellow]stopping after this step and saving a checkpoint (Ctrl-C again to abort)[/]")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

