"""The PyTorch engine: train a model on a decoded cache, stage by stage, resumable at any batch.

Read it top to bottom like airbench: :class:`TorchEngine` builds the model
(pretrained weights, or the data's statistics and FastNet's whitening),
fits the schedule to ``--time-budget`` from measured steps, and ``fit``
loops over the stages (:func:`plan_stages`), epochs and batches, firing the
callbacks' events (:mod:`imgclf.engines.callbacks`). Every batch's shuffle,
augmentation, mixup and dropout randomness is seeded by (seed, epoch,
batch), so a run resumed from a checkpoint (taken at an epoch end or on
Ctrl-C mid-epoch) ends with the same weights as an uninterrupted one on a CPU.

A probe stage freezes the backbone including its BatchNorm statistics and
runs it under ``no_grad``: only the classifier learns, and the backward pass
costs nothing.

Under torchrun (:mod:`imgclf.distributed`) every rank runs this same loop:
the train loader hands each rank its share of every global batch (the same
seeded order everywhere, so the steps are one process's steps), each stage's
step module is wrapped in ``DistributedDataParallel`` (which averages the
gradients; the loss is weighted by the share's size, so the average is the
global batch's mean gradient even when shares differ by an image), and
validation and the probe's embedding pass are split by rank and gathered,
so every rank sees the same scores. Rank 0 alone writes checkpoints; an
interrupt on any rank and a stop decided by rank 0 are agreed after every
step, so all ranks leave the loop at the same step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclf import distributed
from imgclf.config import TrainConfig, parse_duration
from imgclf.console import console
from imgclf.data.augment import mix_batch
from imgclf.data.augment_presets import PRESETS, augment_config
from imgclf.data.batches import BatchLoader
from imgclf.data.views import PLAIN, image_views
from imgclf.deploy.bundle import BundleInfo, write_bundle
from imgclf.embeddings.embedder import Embedder, Preprocessing, embedding_identity
from imgclf.engines.budget import StageClock, epochs_that_fit
from imgclf.engines.callbacks import Callback, FitState, fire
from imgclf.engines.checkpoint import load_checkpoint, save_checkpoint
from imgclf.engines.contract import (
    BestEpoch,
    FitResult,
    Stage,
    TrainingData,
    class_weights,
    correct_predictions,
    plan_stages,
    score_logits,
    split_loader,
    warmup_steps,
)
from imgclf.engines.history import history_row
from imgclf.engines.linear_probe import (
    CV_FOLDS,
    fit_label_heads,
    fit_linear_head,
    load_into_head,
    supports_linear_probe,
)
from imgclf.engines.lookahead import Lookahead
from imgclf.engines.optim import build_optimizer, build_scheduler, parameter_groups
from imgclf.engines.tail import TailStage
from imgclf.errors import ImgclfError
from imgclf.models import create_model, load_pretrained, pretrained_source
from imgclf.models.device import autocast, choose_device, choose_precision
from imgclf.models.pretrained import weights_fingerprint
from imgclf.recipes import model_family
from imgclf.runs import RunDirectory

STATS_SAMPLE = 5000  # training images whose pixels give the normalisation of a from-scratch model


@dataclass
class _Position:
    """Where a run is: which stage, the global epoch, the batch within it, the step within the stage, epochs trained."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    stage_step: int = 0
    epoch_in_stage: int = 0
    trained_epochs: float = 0.0  # over the whole run, fractions of a stage's epochs included


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


class TorchEngine:
    """Owns the model, the optimiser of the current stage, EMA and the loaders; ``fit`` runs the plan."""

    def __init__(self, config: TrainConfig, run: RunDirectory) -> None:
        self.config = config
        self.run = run
        self.device = choose_device(config.device)
        self.precision = choose_precision(config.precision, self.device)
        self.world = distributed.current_world()
        self.machine = f"{self.device.type} {self.precision}" + (
            f" x {self.world.size} processes" if self.world.is_distributed else "")
        self.checkpoint: dict[str, Any] | None = None
        self.ema: nn.Module | None = None
        self.lookahead: Lookahead | None = None
        self._embedder: Embedder | None = None
        self.tail: TailStage | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self.clock: StageClock | None = None  # the current stage's schedule, re-planned by a time budget
        self.budget_started: float | None = None  # perf_counter when the --time-budget began counting

    # ----------------------------------------------------------------- model
    def build(self, data: TrainingData, resume: bool) -> bool:
        """The model (and, with ``resume``, the run's last checkpoint); whether a checkpoint was loaded."""
        self.data = data
        if resume:
            if self.run.last_checkpoint.exists():
                self.checkpoint = load_checkpoint(self.run.last_checkpoint)
                console.print(f"resuming {self.run.path} at epoch {len(self.checkpoint['history']) + 1}")
            else:  # stopped before the first checkpoint (e.g. while decoding): start over with the saved split
                console.print(f"{self.run.path} has no checkpoint yet; starting its training from the beginning")
        config, data = self.config, self.data
        torch.manual_seed(config.seed)
        model = self._create_model()
        if config.sync_bn and self.world.is_distributed:  # BatchNorm statistics of the global batch, not the share
            if self.device.type != "cuda":
                raise ImgclfError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); drop it on CPUs, "
                                  "where each process's BatchNorm sees its share of the batch")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(device=self.device, memory_format=memory_format)
        self.head = model.get_classifier()
        # what the architecture itself keeps fixed (e.g. FastNet's whitening filters) stays fixed in every stage
        self._trainable = {id(parameter): parameter.requires_grad for parameter in model.parameters()}
        # the probe stage becomes one logistic-regression fit on cached embeddings where it can;
        # ``embedding_weights`` names the pretrained weights, which (with the model) key that cache
        self.embedding_weights = None
        if config.pretrained:
            found = weights_fingerprint(config.weights) or pretrained_source(config.model or "") or config.weights
            self.embedding_weights = str(found) if found else None
        self.uses_linear_probe = (config.linear_probe and self.embedding_weights is not None
                                  and supports_linear_probe(self.head))
        weights = class_weights(data, config)
        self.class_weights = weights.to(self.device) if weights is not None else None
        if config.strategy == "tail":  # None when its activations would not fit in memory: the probe alone
            self.tail = TailStage.plan(self.model, config, data, self.world.is_distributed, self.frozen_identity(),
                                       self.train_views())
        self._adopt(config)
        return self.checkpoint is not None

    def _create_model(self) -> nn.Module:
        """The model, with ``data.mean``/``std`` set to the normalisation it expects (its weights' or the data's)."""
        config, data = self.config, self.data
        channels = 1 if config.grayscale else 3
        model = create_model(config.model, len(data.classes), in_chans=channels, image_size=config.image_size,
                             **{**config.model_args, **regularisation_args(config)})
        if config.pretrained and self.checkpoint is None:
            weights = load_pretrained(model, config.model, Path(config.weights) if config.weights else None)
            console.print(f"pretrained weights: {weights.source}")
            data.mean, data.std = tuple(weights.mean[:channels]), tuple(weights.std[:channels])
            return model
        if model_family(config.model) == "tutorial-cnn":
            data.mean, data.std = (0.0,) * channels, (1.0,) * channels  # the seed tutorial's Rescaling(1/255)
        else:
            train = data.rows["train"]  # rows are sorted by class: a strided sample covers every class
            picked = train[np.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).astype(np.int64)]
            sample = data.pixels[np.unique(picked)].astype(np.float32) / 255.0
            data.mean = tuple(float(v) for v in sample.mean(axis=(0, 1, 2)))
            data.std = tuple(max(float(v), 1e-3) for v in sample.std(axis=(0, 1, 2)))
            if hasattr(model, "init_whitening") and not config.pretrained:
                # also on resume: it decides which weights are frozen; the checkpoint then sets their values
                images = torch.from_numpy(sample).permute(0, 3, 1, 2)
                model.init_whitening((images - torch.tensor(data.mean)[:, None, None])
                                     / torch.tensor(data.std)[:, None, None])
        if self.checkpoint is not None:
            normalisation = self.checkpoint["normalisation"]
            data.mean, data.std = tuple(normalisation["mean"]), tuple(normalisation["std"])
        return model

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

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def write_bundle(self, info: BundleInfo, directory: Path) -> Path:
        return write_bundle(info, self.evaluated_model().state_dict(), directory)

    # ----------------------------------------------------------------- stages
    def steps_in(self, stage: Stage) -> int:
        return max(1, math.ceil(stage.epochs * len(self.train_loader)))

    def _start_stage(self, stage: Stage) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        head_ids = {id(parameter) for parameter in self.head.parameters()}
        if stage.trainable == "tail":
            assert self.tail is not None
            head_ids |= {id(parameter) for parameter in self.tail.model.parameters()}  # the tail learns with the head
            self.train_loader = self.tail.loader()  # batches of kept activations, not images
        for parameter in self.model.parameters():
            learns = stage.trainable == "all" or id(parameter) in head_ids
            parameter.requires_grad_(learns and self._trainable[id(parameter)])
        groups = parameter_groups(self.model, self.head, self.config, stage.backbone_lr_scale, stage.trainable,
                                  stage.lr_scale)
        optimizer = build_optimizer(groups, self.config)
        self.forward = self._step_module(stage)
        total = self.steps_in(stage)
        warmup = warmup_steps(self.config, stage, self.stages, len(self.train_loader), total)
        self.clock = StageClock.of(total)
        return optimizer, build_scheduler(optimizer, self.clock, warmup, self.config.schedule)

    def _step_module(self, stage: Stage) -> Callable[[torch.Tensor], torch.Tensor]:
        """What a training step of ``stage`` calls: the step module, data-parallel across ranks, compiled if asked.

        Made per stage because DistributedDataParallel reduces exactly the
        parameters that need gradients when it is made (the head alone in a
        head stage); making it also copies rank 0's weights to every rank.
        """
        module: nn.Module = (self.tail.model if stage.trainable == "tail" and self.tail is not None
                             else _StepModel(self.model, head_only=stage.trainable == "head"))
        if self.world.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.world.local_rank] if self.device.type == "cuda" else None)
        return torch.compile(module) if self.config.compile else module  # type: ignore[return-value]

    def _set_train_mode(self, stage: Stage) -> None:
        if stage.trainable == "tail":  # BatchNorm statistics frozen, as fine-tuning keeps them
            self.model.eval()
            return
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

    def _train_step(self, stage: Stage, images: torch.Tensor, targets: torch.Tensor, seed: int,
                    optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)  # dropout and drop-path draw from the global generator
        mixed_targets = targets
        if self.augment.mixup > 0 or self.augment.cutmix > 0:
            soft = targets.float() if self.data.multilabel else F.one_hot(targets, len(self.data.classes)).float()
            images, mixed_targets = mix_batch(images, soft, self.augment, torch.Generator().manual_seed(seed))
        with autocast(self.device, self.precision):
            logits = self.forward(images)
        loss = self._loss(logits, mixed_targets)
        # DistributedDataParallel averages the ranks' gradients; weighting each rank's mean loss by its share
        # of the global batch makes that average the global batch's mean gradient (1 in one process)
        objective = loss * (len(images) * self.world.size / self.global_batch) if self.world.is_distributed else loss
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
        return loss.detach(), correct_predictions(logits.detach(), targets, self.data.multilabel)


    # ----------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_logits(self, split: str, tta: bool = False) -> torch.Tensor:
        """Logits for every row of ``split`` (no augmentation; flip-averaged with ``tta``)."""
        model = self.evaluated_model()
        if not tta and self.tail is not None and self.ema is None and self.tail.has(split):
            return self.tail.logits(split)  # the frozen part never changes: its kept activations through the tail
        if not tta and self.backbone_is_embedder():
            # the backbone never changed: its cached embeddings through the head are these logits, in seconds
            head = model.get_classifier()
            features = self._embed_split(split)
            return head(torch.from_numpy(features).to(head.weight)).float().cpu()
        model.eval()
        rows, targets = self._my_share(split)
        loader = BatchLoader(self.data.pixels, rows, targets, 2 * self.config.batch_size, PRESETS["none"],
                             self.data.mean, self.data.std, shuffle=False, device=self.device)
        outputs = [torch.empty(0, len(self.data.classes))]
        for images, _ in loader:
            with autocast(self.device, self.precision):
                logits = model(images).float()
                if tta:
                    logits = 0.5 * (logits + model(images.flip(3)).float())
            outputs.append(logits.cpu())
        return torch.cat(distributed.gather_in_rank_order(torch.cat(outputs)))  # type: ignore[arg-type]

    def _my_share(self, split: str) -> tuple[np.ndarray, torch.Tensor]:
        """This rank's contiguous share of ``split``'s rows and targets (all of them in one process)."""
        mine = self.world.share(len(self.data.rows[split]))
        return self.data.rows[split][mine.start:mine.stop], self.data.split_targets(split)[mine.start:mine.stop]

    def _embed_split(self, split: str, view: str = PLAIN) -> np.ndarray:
        """The backbone's embeddings of ``split`` (in ``view``): each rank embeds its share, every rank gets them all."""
        rows, _ = self._my_share(split)
        embedder = self.embedder()
        description = f"Embedding {split}" + ("" if view == PLAIN else f" ({view})")
        mine = (embedder.embed_decoded(self.data.pixels, rows, self.data.paths, description=description, view=view)
                if len(rows) else np.empty((0, embedder.dim), dtype=np.float32))  # a split smaller than the world
        parts = distributed.gather_in_rank_order(mine)
        return np.concatenate(parts)  # type: ignore[arg-type]

    def _scores(self, split: str) -> dict[str, float]:
        return score_logits(self.predict_logits(split), self.data.split_targets(split), self.data.multilabel)

    def evaluated_model(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    # ----------------------------------------------------------------- time budget
    def measure_step_seconds(self, stage: Stage, steps: int = 4, low_res: bool = False) -> float:
        """Seconds per training step of ``stage`` (at ``--low-res`` with ``low_res``), measured on a few batches.

        The model is left as it was.
        """
        started = time.perf_counter()
        saved = copy.deepcopy(self.model.state_dict())
        optimizer, _ = self._start_stage(stage)
        self._set_train_mode(stage)
        finished_at = []  # step ends, so the gaps include waiting for data as well as computing
        self.train_loader.set_epoch(0)
        for index, (images, targets) in enumerate(_take(self.train_loader, steps + 1)):
            self._train_step(stage, self._downscale(images) if low_res else images, targets, index, optimizer)
            finished_at.append(time.perf_counter())
        self.model.load_state_dict(saved)
        if len(finished_at) < 2:
            return finished_at[0] - started if finished_at else 0.0
        return float(np.median(np.diff(finished_at)))

    def fit_to_budget(self, seconds: float) -> TrainConfig:
        """Epochs that fit ``seconds``, from the measured speed of a few steps of each stage.

        Warm-up and probe epochs keep their share of the schedule, so the whole
        schedule (not just its length) is fitted to the budget.
        """
        self.budget_started = time.perf_counter()  # the measurement is part of the budget
        # every rank measures (the steps are collective), rank 0's measurement decides the schedule
        self._adopt(distributed.broadcast_from_main(self._budget_config(seconds)))  # type: ignore[arg-type]
        return self.config

    def _budget_config(self, budget: float) -> TrainConfig:
        config = self.config
        assert self.budget_started is not None
        steps_per_epoch = len(self.train_loader)
        val_rows = len(self.data.rows["val"])
        forward_per_image: dict[str, float] = {}  # seconds of one forward pass per image, by stage kind
        epoch_seconds: dict[str, float] = {}
        for stage in self.stages:
            if stage.trainable in epoch_seconds or stage.trainable == "tail" or (
                    stage.trainable == "head" and self.uses_linear_probe):  # the tail's epochs are fixed (recipes)
                continue
            step = self.measure_step_seconds(stage)
            forward_per_image[stage.trainable] = step / config.batch_size / (1 if stage.trainable == "head" else 3)
            if config.low_res is not None and stage.trainable == "all":  # its share of the stage's steps is cheaper
                low = min(1.0, (config.low_res_epochs or 0.0) / stage.epochs)
                step = low * self.measure_step_seconds(stage, low_res=True) + (1 - low) * step
            epoch_seconds[stage.trainable] = steps_per_epoch * step + val_rows * forward_per_image[stage.trainable]
        left = budget - (time.perf_counter() - self.budget_started)
        if self.uses_linear_probe:
            # the probe is one embedding pass over train + val (about a third of a training step per image)
            # and a fit of a second or two, whatever its epochs; only fine-tuning scales with the budget
            finetune = epoch_seconds.get("all")
            if finetune is None:  # a probe alone: nothing to fit to the budget
                return config
            probe_epochs = config.probe_epochs or 1.0
            probe = 0.0 if self.embeddings_cached() else (
                (len(self.data.rows["train"]) + val_rows) * forward_per_image["all"])
            epochs = probe_epochs + epochs_that_fit(left - probe, finetune)
            console.print(f"time budget {config.time_budget}: probe about {probe:.0f} s, fine-tuning "
                          f"{finetune:.1f} s per epoch measured; training {epochs:g} epochs")
            return replace(config, epochs=epochs,
                           warmup_epochs=round((config.warmup_epochs or 0.0) * epochs / config.epochs, 2))
        shares = {stage.trainable: stage.epochs / config.epochs for stage in self.stages}
        per_epoch = sum(shares[kind] * seconds for kind, seconds in epoch_seconds.items())
        epochs = epochs_that_fit(left, per_epoch)
        if config.strategy == "two-stage":
            epochs = max(epochs, 2.0)
        scale = epochs / config.epochs
        console.print(f"time budget {config.time_budget}: {per_epoch:.1f} s per epoch measured; "
                      f"training {epochs:g} epochs")
        return replace(config, epochs=epochs, warmup_epochs=round((config.warmup_epochs or 0.0) * scale, 2),
                       whitening_bias_epochs=None if config.whitening_bias_epochs is None
                       else round(config.whitening_bias_epochs * scale, 2),
                       low_res_epochs=None if config.low_res_epochs is None else round(config.low_res_epochs * scale, 2),
                       probe_epochs=None if config.probe_epochs is None
                       else max(1.0, round(config.probe_epochs * scale, 1)))

    # ----------------------------------------------------------------- the loop
    def fit(self, callbacks: list[Callback]) -> FitResult:
        """Run every stage from where ``build`` left off, firing ``callbacks`` (after this engine's checkpoint)."""
        started = time.perf_counter()
        resume = self.checkpoint
        self.position = _Position()
        history: list[dict[str, Any]] = []
        self.best = BestEpoch()
        if self.config.ema:
            self.ema = copy.deepcopy(self.model).eval()
            for parameter in self.ema.parameters():
                parameter.requires_grad_(False)
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            if self.ema is not None and resume["ema"] is not None:
                self.ema.load_state_dict(resume["ema"])
            self.position = _Position(**resume["position"])
            history, self.best = list(resume["history"]), BestEpoch.from_state(resume["best"])
            if self.config.time_budget:  # the budget goes on from what the run had spent of it
                spent = resume.get("budget_spent") or sum(row["seconds"] for row in history)
                self.budget_started = time.perf_counter() - float(spent)
        fit = FitState(self.config, self.stages, history, best=self.best)
        callbacks = [_Checkpoint(self), *callbacks] if self.world.is_main else list(callbacks)
        fire(callbacks, "on_fit_begin", fit)
        try:
            with _deferred_interrupt(fit, self.world.is_distributed):
                for stage_index in range(self.position.stage, len(self.stages)):
                    self.optimizer, self.scheduler = self._start_stage(self.stages[stage_index])
                    self.lookahead = Lookahead(self.model) if self.config.lookahead else None
                    if resume is not None and stage_index == self.position.stage:
                        assert self.clock is not None
                        schedule = resume.get("schedule")
                        if schedule is not None and schedule["since_step"] > 0:
                            self.clock.load_state_dict(schedule)  # a re-planned stage goes on as re-planned
                        self._load_optimizer_state(resume["optimizer"])
                        self.scheduler.load_state_dict(resume["scheduler"])
                        self.scaler.load_state_dict(resume["scaler"])
                        if self.lookahead is not None and resume.get("lookahead") is not None:
                            self.lookahead.load_state_dict(resume["lookahead"])
                    else:
                        self.position = _Position(stage=stage_index, epoch=self.position.epoch,
                                                  trained_epochs=self.position.trained_epochs)
                    fit.stage_index = stage_index
                    fire(callbacks, "on_stage_begin", fit)
                    self._run_stage(fit, callbacks)
                    if fit.interrupted:
                        fire(callbacks, "on_interrupt", fit)
                    if fit.interrupted or fit.stop_reason:
                        break
        finally:
            fire(callbacks, "on_fit_end", fit)
        if self.world.is_distributed:
            distributed.share_buffers(self.model)
            digest = distributed.same_weights_everywhere(self.model.state_dict())
            console.print(f"{self.world.size} processes ended with the same weights (sha256 {digest[:16]})")
        shipped = self._restore_best()
        return FitResult(history=history, best_epoch=self.best.epoch,
                         stopped_early=fit.stop_reason is not None and not fit.interrupted,
                         interrupted=fit.interrupted, seconds=time.perf_counter() - started, model=shipped,
                         trained_epochs=round(self.position.trained_epochs, 2))

    def _run_stage(self, fit: FitState, callbacks: list[Callback]) -> None:
        """Epochs of the current stage from ``self.position``, until it ends or a callback stops the fit.

        A stage whose length follows the budget is re-planned after each
        epoch, before the epoch's checkpoint, so a resume goes on with it.
        """
        stage, position, clock = fit.stage, self.position, self.clock
        assert clock is not None
        probe = stage.trainable == "head" and self.uses_linear_probe and position.stage_step == 0
        fit.fits_budget = self._follows_budget(stage)
        fit.epochs_in_stage = 1 if probe else math.ceil(clock.total / len(self.train_loader))
        # the speed a re-plan goes by: wall time per step since the last one (validation, checkpoints included)
        since, since_step = time.perf_counter(), position.stage_step
        while position.stage_step < clock.total:
            fit.epoch, fit.epoch_in_stage = position.epoch + 1, position.epoch_in_stage + 1
            row = self._linear_probe(fit, callbacks) if probe else self._run_epoch(fit, callbacks)
            if row is None:  # interrupted mid-epoch
                return
            replanned = None
            if fit.fits_budget and fit.stop_reason is None and position.stage_step < clock.total:
                replanned = self._replan(fit, (time.perf_counter() - since) / (position.stage_step - since_step))
                since, since_step = time.perf_counter(), position.stage_step
            row["planned_epochs"] = self.planned_epochs()
            fit.history.append(row)
            fit.row = row
            fit.last_epoch = position.stage_step >= clock.total and stage is self.stages[-1]
            self._track_best(fit)
            fire(callbacks, "on_epoch_end", fit)
            if replanned:  # under the epoch's own line
                console.print(replanned)
            self._agree(fit)
            if fit.interrupted or fit.stop_reason:
                return

    def _run_epoch(self, fit: FitState, callbacks: list[Callback]) -> dict[str, Any] | None:
        """One epoch (the rest of one, after a resume) of training steps; its history row, or None if interrupted.

        A stop asked for during the epoch (a stalled budget run) ends it after the current step.
        """
        stage, position, clock = fit.stage, self.position, self.clock
        assert clock is not None
        total_steps, first_batch = clock.total, position.batch
        self._set_train_mode(stage)
        loader = self.train_loader
        loader.set_epoch(position.epoch, start_batch=position.batch)
        steps = min(len(loader), total_steps - position.stage_step + position.batch)
        tally = _EpochTally()
        fit.steps, fit.step, fit.images, fit.loss, fit.accuracy = steps, position.batch, 0, 0.0, 0.0
        fire(callbacks, "on_epoch_begin", fit)
        for images, targets in _take(loader, steps - position.batch):
            seed = _seed_for(self.config.seed, position.epoch, position.batch, 7)
            self._freeze_whitening_bias(stage, position.stage_step)
            if self._at_low_res(stage, position.stage_step):
                images = self._downscale(images)
            loss, correct = self._train_step(stage, images, targets, seed, self.optimizer)
            self.scheduler.step()
            position.batch += 1
            position.stage_step += 1
            if self.lookahead is not None:
                self.lookahead.step(self.model, position.stage_step, clock.progress(position.stage_step))
            self._update_ema(position.stage_step, total_steps)
            tally.add(loss, correct, len(images))
            fit.step, fit.images, fit.loss, fit.accuracy = position.batch, tally.seen, tally.mean_loss, tally.accuracy
            fire(callbacks, "on_step_end", fit)
            self._agree(fit)
            if fit.interrupted and position.batch < steps:
                return None  # mid-epoch; at an epoch's end the row and checkpoint come first
            if fit.stop_reason is not None:
                break
        seconds = time.perf_counter() - tally.started
        tally.loss, tally.correct, seen = distributed.sum_across([tally.loss, tally.correct, tally.seen], self.device)
        tally.seen = int(seen)  # every rank's images: the epoch's figures are the global batch's
        row = self._epoch_row(stage, tally.mean_loss, tally.accuracy, self.optimizer.param_groups[-1]["lr"],
                              seconds, tally.seen)
        position.trained_epochs += (position.batch - first_batch) / len(loader)
        position.epoch += 1
        position.epoch_in_stage += 1
        position.batch = 0
        return row

    def _follows_budget(self, stage: Stage) -> bool:
        """Whether ``stage``'s length is re-planned to the time budget: a whole-network stage that ends the run.

        The tail's epochs are its recipe's (the photo planner priced them) and a probe's are one fit or few.
        """
        return self.budget_started is not None and stage.trainable == "all" and stage is self.stages[-1]

    def _replan(self, fit: FitState, step_seconds: float) -> str | None:
        """Re-fit the rest of the stage to the budget's seconds left, at the speed of the epoch just trained.

        ``step_seconds`` is the wall time per step since the last re-plan
        (the epoch's validation pass and the previous one's checkpoint
        included). Rank 0's plan is every rank's, as the opening one is.
        Returns what to tell the user, None when the plan did not change.
        """
        assert self.clock is not None and self.budget_started is not None
        steps_per_epoch = len(self.train_loader)
        per_epoch = step_seconds * steps_per_epoch
        left = parse_duration(self.config.time_budget or "") - (time.perf_counter() - self.budget_started)
        step = self.position.stage_step
        total = distributed.broadcast_from_main(step + math.ceil(epochs_that_fit(left, per_epoch) * steps_per_epoch))
        if total == self.clock.total:
            return None
        self.clock.replan(step, int(total))  # type: ignore[arg-type]
        fit.epochs_in_stage = math.ceil(self.clock.total / steps_per_epoch)
        return (f"re-planned: {self.planned_epochs():g} epochs fit the {max(left, 0):.0f} s left "
                f"({per_epoch:.1f} s an epoch measured)")

    def planned_epochs(self) -> float:
        """The run's epochs as now planned: its stages' epochs, the current stage's as re-planned (its steps)."""
        assert self.clock is not None
        current = self.stages[self.position.stage]
        epochs = current.epochs if self.clock.total == self.clock.planned else self.clock.total / len(self.train_loader)
        return round(sum(stage.epochs for stage in self.stages if stage is not current) + epochs, 2)

    def _agree(self, fit: FitState) -> None:
        """Every rank leaves the loop at the same step: interrupted if any rank was, stopped if rank 0 stopped."""
        if not self.world.is_distributed:
            return
        interrupted, stopped = distributed.agree(fit.interrupted, fit.stop_reason is not None, self.device)
        if interrupted:
            fit.interrupt()
        if stopped and fit.stop_reason is None:
            fit.stop("stopped by rank 0")

    def _epoch_row(self, stage: Stage, train_loss: float, train_accuracy: float, lr: float, seconds: float,
                   images: int) -> dict[str, Any]:
        """One line of metrics.csv (the validation scores measured now) for the epoch at ``self.position``."""
        scores = self._scores("val") if self.has_val else {"loss": None, "accuracy": None}
        return history_row(self.position.epoch + 1, stage.name, train_loss, train_accuracy, scores["loss"],
                           scores["accuracy"], lr, seconds, images)

    def _track_best(self, fit: FitState) -> None:
        """Keep the weights of the best epoch so far (``--monitor``), to ship them at the end."""
        assert fit.row is not None
        if fit.best.update(fit.row, self.config.monitor):
            self._best_weights = copy.deepcopy(self.evaluated_model().state_dict())

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        """The checkpoint's optimiser state; one from a version that grouped the parameters otherwise is refused."""
        try:
            self.optimizer.load_state_dict(state)
        except ValueError as error:  # torch: a different number or size of parameter groups
            raise ImgclfError(f"{self.run.last_checkpoint}: its optimiser state does not fit this version's "
                              f"parameter groups ({error}); it was written by another imgclf version: finish the "
                              "run with that version, or train again with --overwrite") from None

    def _restore_best(self) -> nn.Module:
        model = self.evaluated_model()
        weights = self._best_weights
        if weights is None and self.run.best_checkpoint.exists():
            weights = load_checkpoint(self.run.best_checkpoint)["model"]
        if weights is not None:
            model.load_state_dict(weights)
        return model

    # ----------------------------------------------------------------- the linear probe
    def _probe_splits(self) -> list[str]:
        return ["train"] + (["val"] if self.has_val else [])

    def _preprocessing(self) -> Preprocessing:
        config = self.config
        return Preprocessing(config.image_size or 0, config.resize or "squash", 1 if config.grayscale else 3,
                             self.data.mean, self.data.std)

    def embedder(self) -> Embedder:
        """The frozen backbone as an embedder (made once, before any training changes the weights)."""
        if self._embedder is None:
            config = self.config
            self._embedder = Embedder(self.model, config.model or "", self.embedding_weights or "",
                                      self._preprocessing(), config.model or "", config.model_args, self.device,
                                      self.precision, batch_size=2 * (config.batch_size or 32))
        return self._embedder

    def frozen_identity(self) -> dict[str, Any] | None:
        """What the pretrained backbone's outputs depend on (the embedder's cache key), None without known weights."""
        if self.embedding_weights is None:
            return None
        config = self.config
        return embedding_identity(config.model or "", config.model_args, self.embedding_weights,
                                  self._preprocessing(), self.precision)

    def backbone_is_embedder(self) -> bool:
        """Whether the whole run is one linear probe, so the trained backbone is exactly the embedder's."""
        return self.uses_linear_probe and all(stage.trainable == "head" for stage in self.stages)

    def embeddings_cached(self) -> bool:
        """Whether the linear probe will find every embedding it needs on disk (it then costs seconds)."""
        from imgclf.embeddings.store import image_key

        store = self.embedder().store
        keys = [image_key(self.data.paths[row]) for split in self._probe_splits() for row in self.data.rows[split]]
        return bool(store.get(keys)[1].all())

    def _linear_probe(self, fit: FitState, callbacks: list[Callback]) -> dict[str, Any]:
        """The whole probe stage as one fit on cached embeddings (an epoch without steps); its history row."""
        started = time.perf_counter()
        fit.steps = fit.step = fit.images = 0
        fire(callbacks, "on_epoch_begin", fit)
        splits = self._probe_splits()
        features = {split: self._probe_features(split) for split in splits}
        labels = {split: self.data.split_targets(split).numpy() for split in splits}
        # with TTA the model is judged on its views (mirror, zoom) too, so a single-label probe trains on them as well
        train_views = [features["train"]] + [self._probe_features("train", view) for view in self.train_views()[1:]]
        probe = None
        if self.world.is_main:  # the fit runs once; every rank loads rank 0's weights
            balanced = self.config.class_weights == "auto"
            if self.data.multilabel:
                probe = fit_label_heads(features["train"], labels["train"], features.get("val"), labels.get("val"),
                                        balanced=balanced, regularisation=self.config.probe_c)
            else:
                probe = fit_linear_head(train_views, labels["train"], features.get("val"), labels.get("val"),
                                        len(self.data.classes), balanced=balanced, seed=self.config.seed,
                                        regularisation=self.config.probe_c)
        probe = distributed.broadcast_from_main(probe)  # type: ignore[assignment]
        assert probe is not None
        load_into_head(self.head, probe)
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        train_logits = torch.from_numpy(features["train"] @ probe.weight.T + probe.bias).float()
        seconds = time.perf_counter() - started
        train_loss = score_logits(train_logits, torch.from_numpy(labels["train"]), self.data.multilabel)["loss"]
        row = self._epoch_row(fit.stage, train_loss, probe.train_accuracy, 0.0, seconds, len(self.data.rows["train"]))
        chosen_by = "--probe-c" if self.config.probe_c is not None else \
            "validation mAP" if self.data.multilabel else f"{CV_FOLDS}-fold cross-validation"
        source = "embeddings from the tail's activation pass" if self.tail is not None else "cached embeddings"
        console.print(f"probe: logistic regression on {source} ({len(train_views)} view(s) of train), "
                      f"C={probe.regularisation:g} by {chosen_by}, fitted in {probe.seconds:.1f} s")
        self.position.epoch += 1
        self.position.stage_step = self.steps_in(fit.stage)
        self.position.epoch_in_stage = 1
        self.position.trained_epochs += 1
        return row

    def train_views(self) -> list[str]:
        """The views of each training image the probe (and the tail) train on: TTA's views, single-label data only."""
        return [PLAIN] if self.data.multilabel else image_views(bool(self.config.tta), self.config.tta_zoom or 0.0)

    def _probe_features(self, split: str, view: str = PLAIN) -> np.ndarray:
        """The probe's embeddings: from the tail's activation pass when a tail follows (one pass for both)."""
        return self.tail.features(split, view) if self.tail is not None else self._embed_split(split, view)

    def _freeze_whitening_bias(self, stage: Stage, stage_step: int) -> None:
        """fastnet's whitening bias trains for ``--whitening-bias-epochs`` only (airbench: 3 of ~10 epochs).

        Past that point it gets no gradient, so the optimiser skips it and the
        first layer is fixed while the rest of the network settles on it. In a
        distributed run the step module is made again when that changes:
        DistributedDataParallel waits for a gradient of every parameter that
        needed one when it was made, and fails on the step the bias has none.
        """
        whiten = getattr(self.model, "whiten", None)
        epochs = self.config.whitening_bias_epochs
        if epochs is None or whiten is None or whiten.bias is None or stage.trainable != "all":
            return
        assert self.clock is not None
        trains = self.clock.position(stage_step) < epochs * len(self.train_loader)
        if whiten.bias.requires_grad != trains:
            whiten.bias.requires_grad_(trains)
            if self.world.is_distributed:
                self.forward = self._step_module(stage)

    def _at_low_res(self, stage: Stage, stage_step: int) -> bool:
        """Whether step ``stage_step`` of ``stage`` trains on downscaled batches (``--low-res``, whole-network stages)."""
        return (self.config.low_res is not None and stage.trainable == "all" and self.clock is not None
                and self.clock.position(stage_step) < (self.config.low_res_epochs or 0.0) * len(self.train_loader))

    def _downscale(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at ``--low-res`` pixels a side, antialiased: progressive resizing's early epochs.

        On a CPU a step costs about as much as its pixels, so an epoch at 24 px
        costs about half of one at 32 px; early epochs learn coarse features,
        which survive the switch to full size (the network ends in a global pool).
        """
        side = self.config.low_res
        small = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        return small.contiguous(memory_format=torch.channels_last) if self.config.channels_last else small

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

    # ----------------------------------------------------------------- checkpoints
    def state(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resume needs, as a checkpoint dict (tensors, numbers, strings, lists)."""
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": vars(self.position).copy(),
            "schedule": self.clock.state_dict() if self.clock is not None else None,
            "budget_spent": None if self.budget_started is None else time.perf_counter() - self.budget_started,
            "normalisation": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "history": history,
            "best": self.best.state_dict(),
        }


class _StepModel(nn.Module):
    """What one training step runs: the whole model, or (a head stage) the frozen backbone under no_grad and the head.

    One module for both, so that DistributedDataParallel has one thing to
    wrap whatever the stage trains.
    """

    def __init__(self, model: nn.Module, head_only: bool) -> None:
        super().__init__()
        self.model = model
        self.head_only = head_only

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            with torch.no_grad():
                features = self.model.forward_features(images)
            return self.model.forward_head(features)
        return self.model(images)


class _Checkpoint(Callback):
    """``checkpoints/best.pt`` when an epoch is the best so far, ``last.pt`` after every epoch and on Ctrl-C."""

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine

    def on_epoch_end(self, fit: FitState) -> None:
        engine = self.engine
        assert fit.row is not None
        if fit.best_epoch == fit.row["epoch"]:
            save_checkpoint({"format": 1, "model": engine.evaluated_model().state_dict(), "epoch": fit.row["epoch"]},
                            engine.run.best_checkpoint)
        self.on_interrupt(fit)

    def on_interrupt(self, fit: FitState) -> None:
        engine = self.engine
        save_checkpoint(engine.state(fit.history), engine.run.last_checkpoint)


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


@contextmanager
def _deferred_interrupt(fit: FitState, distributed_run: bool = False) -> Iterator[None]:
    """The first Ctrl-C asks the loop to stop after the current step; a second one aborts at once.

    In a distributed run a rank gets Ctrl-C from the terminal and then
    SIGTERM from torchrun, which is shutting the job down: both ask for the
    same stop after this step (torchrun kills what is left after 30 s).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if not fit.interrupted:
            console.print("[yellow]stopping after this step and saving a checkpoint"
                          + ("[/]" if distributed_run else " (Ctrl-C again to abort)[/]"))
        fit.interrupt()
        if not distributed_run:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    kinds = [signal.SIGINT, signal.SIGTERM] if distributed_run else [signal.SIGINT]
    previous = {kind: signal.signal(kind, request_stop) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)


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
