"""The TensorFlow engine: Keras 3 ``model.fit`` behind the same contract (:mod:`imgclf.engines.contract`).

Same input, same output: it trains on the shared :class:`TrainingData`
(the decoded uint8 cache) through the very :class:`BatchLoader` the torch
engine uses, so both frameworks see the same images in the same order with
the same augmentation; it runs the same stages (:func:`plan_stages`) and
returns a :class:`FitResult` whose history rows are ``metrics.csv``'s.

Keras's own callbacks do what they exist for: ``ModelCheckpoint`` (a
``.keras`` file per epoch, optimiser state included) and ``CSVLogger``
(``keras_log.csv``, Keras's names). The best epoch is the contract's
:class:`~imgclf.engines.contract.BestEpoch`, over the whole run as in torch;
its weights are kept in memory and shipped at the end. ``_Events`` turns
Keras's events into ours, so the callbacks of a run (metrics.csv, the
progress bar, TensorBoard, early stopping, a user's) work unchanged here. A
resume reloads the last checkpoint with ``safe_mode=True`` and continues at
the next epoch; unlike the torch engine, it resumes at epoch boundaries.

Per-variable learning rates do not exist in Keras, so fine-tuning uses one
rate for the whole network: ``--lr`` x ``--backbone-lr-scale`` (x 0.1 after
a probe, as in torch). The probe stage is gradient descent on the head.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import TrainConfig
from imgclf.data.augment_presets import PRESETS, augment_config
from imgclf.data.batches import BatchLoader
from imgclf.deploy.bundle import BundleInfo, write_keras_bundle
from imgclf.engines.callbacks import Callback, FitState, fire
from imgclf.engines.contract import (
    BestEpoch,
    FitResult,
    Stage,
    TrainingData,
    class_weights,
    plan_stages,
    split_loader,
    warmup_steps,
)
from imgclf.engines.history import history_row
from imgclf.errors import ImgclfError, one_line
from imgclf.files import write_text_atomic
from imgclf.models.keras_models import backbone_of, build_model, count_parameters
from imgclf.models.keras_setup import keras
from imgclf.runs import RunDirectory

log = logging.getLogger(__name__)

STATE_FILE = "keras_state.json"  # in checkpoints/: position, history and best epoch, written after each checkpoint
STATE_FORMAT = 2  # 2: the best epoch as the contract's BestEpoch (epoch, score, stale) and its file as best_file
CSV_LOG = "keras_log.csv"


def keras_normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0..1 units) under which the shared pipeline hands Keras models 0..255 pixels."""
    return (0.0,) * channels, (1.0 / 255,) * channels


class CacheBatches(keras.utils.PyDataset):
    """The shared :class:`BatchLoader`'s batches as NHWC numpy arrays with one-hot (multi-label: multi-hot) targets.

    Keras asks for batch ``i`` of the current pass; the pass counter
    advances when Keras ends an epoch, starting from ``epoch`` (a resumed run's).
    """

    def __init__(self, loader: BatchLoader, num_classes: int, epoch: int = 0, multilabel: bool = False) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.loader = loader
        self.num_classes = num_classes
        self.epoch = epoch
        self.multilabel = multilabel

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, targets = self.loader.batch(self.epoch, index)
        pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
        if self.multilabel:
            return pixels, targets.numpy().astype(np.float32)
        return pixels, np.eye(self.num_classes, dtype=np.float32)[targets.numpy()]

    def on_epoch_end(self) -> None:
        self.epoch += 1


@keras.saving.register_keras_serializable(package="imgclf")
class PositiveWeightedBinaryCrossentropy(keras.losses.Loss):
    """Sigmoid cross-entropy on logits, each label's positives weighted: torch's ``pos_weight``, for rare labels.

    Keras's ``class_weight`` weighs whole samples by one class, which means
    nothing for multi-hot targets; this is the torch engine's loss instead.
    """

    def __init__(self, positive_weights: list[float] | None = None, name: str = "positive_weighted_bce",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.positive_weights = positive_weights

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        weight = 1.0 if self.positive_weights is None else ops.convert_to_tensor(self.positive_weights, y_pred.dtype)
        return ops.mean(weight * y_true * ops.softplus(-y_pred) + (1.0 - y_true) * ops.softplus(y_pred), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "positive_weights": self.positive_weights}


@keras.saving.register_keras_serializable(package="imgclf")
def subset_accuracy(y_true: Any, y_pred: Any) -> Any:
    """1 where every label of a row is right (logit > 0 against the 0/1 target): the torch engine's accuracy."""
    ops = keras.ops
    right = ops.equal(ops.greater(y_pred, 0.0), ops.greater(y_true, 0.5))
    return ops.cast(ops.all(right, axis=-1), "float32")


@keras.saving.register_keras_serializable(package="imgclf")
class StageSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The torch engine's schedules (:func:`lr_factor`: onecycle, cosine, constant with warm-up) in Keras ops."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, schedule: str) -> None:
        self.peak, self.total_steps, self.warmup_steps, self.schedule = peak, total_steps, warmup_steps, schedule

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        start = 0.2 if self.schedule == "onecycle" else 0.0
        warm = start + (1.0 - start) * (step + 1.0) / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 0.0, 1.0)
        if self.schedule == "onecycle":
            after = 1.0 + (0.05 - 1.0) * progress
        elif self.schedule == "cosine":
            after = 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            after = ops.ones_like(progress)
        return self.peak * ops.where(step < self.warmup_steps, warm, after)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "schedule": self.schedule}


class KerasEngine:
    """Builds (or reloads) the Keras model and runs the plan's stages with ``model.fit``."""

    machine = "tensorflow cpu fp32"
    warm_pretrained = False  # update warm-starts torch models only

    def __init__(self, config: TrainConfig, run: RunDirectory) -> None:
        self.config = config
        self.run = run
        self.stages = [_whole_epochs(stage) for stage in plan_stages(config)]
        self.state: dict[str, Any] | None = None

    def _loader(self, split: str, augment: Any, shuffle: bool, batch_size: int | None = None) -> BatchLoader:
        return split_loader(self.data, self.config, split, augment, shuffle, batch_size)

    # ----------------------------------------------------------------- model
    def build(self, data: TrainingData, resume: bool) -> bool:
        """A fresh model, or with ``resume`` the run's last checkpoint; whether a checkpoint was loaded."""
        self.data = data
        self.classes = len(data.classes)
        self.has_val = len(data.rows.get("val", [])) > 0
        self.data.mean, self.data.std = keras_normalisation(1 if self.config.grayscale else 3)
        self.train_loader = self._loader("train", augment_config(self.config.augment or "none"), shuffle=True)
        self.state = self._read_state() if resume else None
        if self.state:
            self.model = self._load(self.state["checkpoint"])
            log.info(f"resuming at epoch {len(self.state['history']) + 1} from {self.state['checkpoint']}")
        else:
            self.model = self._new_model()
        return self.state is not None

    def _new_model(self) -> keras.Model:
        """A fresh model, pretrained backbone weights loaded as the config says."""
        keras.utils.set_random_seed(self.config.seed)
        weights = None
        if self.config.pretrained:
            weights = self.config.weights or "imagenet"
        channels = 1 if self.config.grayscale else 3
        model = build_model(self.config.model or "", self.classes, self.config.image_size or 0, channels,
                            self.config.model_args, weights)
        if weights is not None:
            log.info(f"pretrained weights: {'Keras ImageNet' if weights == 'imagenet' else weights}")
        return model

    def fit_to_budget(self, seconds: float) -> TrainConfig:
        raise ImgclfError("--backend tensorflow does not support --time-budget; drop it or train with --backend torch")

    def parameter_count(self) -> int:
        return count_parameters(self.model)

    def kept_features(self, split: str) -> np.ndarray | None:
        return None  # nothing kept: the monitoring reference embeds its sample through the bundle

    def write_bundle(self, info: BundleInfo, directory: Path) -> Path:
        return write_keras_bundle(info, self.model, directory)

    def _compile(self, model: keras.Model, stage: Stage) -> None:
        backbone = backbone_of(model)
        if backbone is not None:
            backbone.trainable = stage.trainable == "all"
        if self.data.multilabel:  # independent sigmoids; accuracy is an exact match of the label set, as in torch
            weights = class_weights(self.data, self.config)
            model.compile(optimizer=self._optimizer(stage), loss=PositiveWeightedBinaryCrossentropy(
                None if weights is None else [float(weight) for weight in weights]),
                metrics=[keras.metrics.MeanMetricWrapper(subset_accuracy, name="accuracy"),
                         keras.metrics.BinaryCrossentropy(from_logits=True, name="xent")])
            return
        model.compile(optimizer=self._optimizer(stage), loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=self.config.label_smoothing or 0.0),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                     keras.metrics.CategoricalCrossentropy(from_logits=True, name="xent")])

    def _optimizer(self, stage: Stage) -> keras.optimizers.Optimizer:
        config = self.config
        steps_per_epoch = len(self.train_loader)
        total = max(1, int(stage.epochs) * steps_per_epoch)
        warmup = warmup_steps(config, stage, self.stages, steps_per_epoch, total)
        peak = (config.lr or 1e-3) * stage.lr_scale * stage.backbone_lr_scale
        rate: Any = peak if config.schedule == "constant" and warmup == 0 else StageSchedule(
            peak, total, warmup, config.schedule or "constant")
        clip = {"clipnorm": config.grad_clip} if config.grad_clip else {}
        decay = config.weight_decay or 0.0
        if config.optimizer == "sgd":
            optimizer = keras.optimizers.SGD(rate, momentum=config.momentum or 0.0, nesterov=True,
                                             weight_decay=decay or None, **clip)
        elif decay:
            optimizer = keras.optimizers.AdamW(rate, weight_decay=decay, beta_1=config.momentum or 0.9, **clip)
        else:
            optimizer = keras.optimizers.Adam(rate, beta_1=config.momentum or 0.9, **clip)
        if decay:
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])  # as torch: matrices only
        return optimizer

    # ----------------------------------------------------------------- the loop
    def fit(self, callbacks: list[Callback]) -> FitResult:
        """Run every stage, or continue from the checkpoint ``build`` loaded, firing ``callbacks``."""
        started = time.perf_counter()
        state = self.state
        history: list[dict[str, Any]] = list(state["history"]) if state else []
        fit = FitState(self.config, self.stages, history, best=BestEpoch.from_state(state["best"]) if state
                       else BestEpoch())
        self.best_weights = self._resumed_best_weights(state, fit.best)
        epoch = len(history)
        first_stage = state["stage"] if state else 0
        fire(callbacks, "on_fit_begin", fit)
        try:
            stage_end = 0
            for index, stage in enumerate(self.stages):
                stage_end += int(stage.epochs)
                if index < first_stage or epoch >= stage_end:
                    continue
                if not (state and index == first_stage):  # a reloaded checkpoint keeps its compiled optimiser
                    self._compile(self.model, stage)
                fit.stage_index = index
                fire(callbacks, "on_stage_begin", fit)
                try:
                    self._fit_stage(fit, callbacks, epoch, stage_end)
                except KeyboardInterrupt:
                    log.warning("interrupted; the last finished epoch's checkpoint is kept")
                    fit.interrupt()
                    fire(callbacks, "on_interrupt", fit)
                epoch = len(history)
                if fit.interrupted or fit.stop_reason:
                    break
        finally:
            fire(callbacks, "on_fit_end", fit)
        if self.best_weights is not None and not fit.interrupted:
            self.model.set_weights(self.best_weights)
        return FitResult(history=history, best_epoch=fit.best.epoch or len(history),
                         stopped_early=fit.stop_reason is not None and not fit.interrupted,
                         interrupted=fit.interrupted, seconds=time.perf_counter() - started, model=self.model)

    def _fit_stage(self, fit: FitState, callbacks: list[Callback], epoch: int, stage_end: int) -> None:
        multilabel = self.data.multilabel
        train = CacheBatches(self.train_loader, self.classes, epoch, multilabel)
        validation = None
        if self.has_val:
            validation = CacheBatches(self._loader("val", PRESETS["none"], shuffle=False), self.classes,
                                      multilabel=multilabel)
        checkpoints = self.run.last_checkpoint.parent
        # _Events first: the row, the best epoch, the checkpoint state and the printed line come from it
        keras_callbacks: list[keras.callbacks.Callback] = [
            _Events(fit, callbacks, self.train_loader, sum(int(stage.epochs) for stage in self.stages), self),
            keras.callbacks.ModelCheckpoint(str(checkpoints / "epoch-{epoch:03d}.keras")),
            _StateWriter(self.run, fit),
            keras.callbacks.CSVLogger(str(self.run.path / CSV_LOG), append=epoch > 0),
        ]
        weights = None if multilabel else class_weights(self.data, self.config)  # multi-label: in the loss
        class_weight = None if weights is None else {i: float(weight) for i, weight in enumerate(weights)}
        self.model.fit(train, validation_data=validation, epochs=stage_end, initial_epoch=epoch, verbose=0,
                       callbacks=keras_callbacks, class_weight=class_weight)

    def _resumed_best_weights(self, state: dict[str, Any] | None, best: BestEpoch) -> list[Any] | None:
        """The best epoch's weights a resumed run ships unless a later epoch beats them (read from its checkpoint).

        Without validation the latest epoch is the best: the weights training ends with are shipped.
        """
        if state is None or not best.epoch or not self.has_val:
            return None
        return self._load(state["best_file"]).get_weights()

    def track_best(self, fit: FitState, row: dict[str, Any]) -> None:
        """Take epoch ``row`` into the run's best epoch; keep its weights when it is the new best.

        Without a validation split the latest epoch is the best, and the
        weights training ends with are the ones shipped: nothing to copy.
        """
        if fit.best.update(row, self.config.monitor) and self.has_val:
            self.best_weights = self.model.get_weights()

    # ----------------------------------------------------------------- checkpoints
    def _read_state(self) -> dict[str, Any] | None:
        path = self.run.last_checkpoint.parent / STATE_FILE
        if not path.exists():
            log.info(f"{self.run.path} has no checkpoint yet; starting its training from the beginning")
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ImgclfError(f"{path} is damaged ({error}); start a new run") from None
        if state.get("format") != STATE_FORMAT:
            raise ImgclfError(f"{path} was written by an earlier imgclf version (state format {state.get('format')}); "
                              "finish the run with that version, or train again with --overwrite")
        return state

    def _load(self, name: str) -> keras.Model:
        path = self.run.last_checkpoint.parent / name
        try:
            return keras.saving.load_model(path, safe_mode=True)
        except Exception as error:  # Keras raises several types for a missing, damaged or unsafe file
            first_line = one_line(error)
            raise ImgclfError(f"{path} is not a readable Keras checkpoint ({first_line})") from None


def _whole_epochs(stage: Stage) -> Stage:
    """Keras trains whole epochs: a fractional stage length is rounded (at least one epoch)."""
    epochs = max(1, round(stage.epochs))
    if epochs != stage.epochs:
        log.warning(f"--backend tensorflow trains whole epochs: {stage.name} runs {epochs} "
                    f"instead of {stage.epochs:g}")
    return Stage(stage.name, float(epochs), stage.trainable, stage.backbone_lr_scale, stage.lr_scale)


class _Events(keras.callbacks.Callback):
    """Keras's events as ours: our callbacks run inside ``model.fit``; each epoch's history row is made here."""

    def __init__(self, fit: FitState, callbacks: list[Callback], loader: BatchLoader, plan_epochs: int,
                 engine: KerasEngine) -> None:
        super().__init__()
        self.fit, self.callbacks, self.plan_epochs, self.engine = fit, callbacks, plan_epochs, engine
        self.steps = len(loader)
        self.images = len(loader) * loader.batch_size if loader.drop_last else len(loader.rows)
        self.started = time.perf_counter()
        self.seconds: float | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started, self.seconds = time.perf_counter(), None
        fit, epochs = self.fit, int(self.fit.stage.epochs)
        fit.epoch, fit.epochs_in_stage = epoch + 1, epochs
        fit.epoch_in_stage = epochs - (self.params["epochs"] - epoch) + 1
        fit.steps, fit.step, fit.images, fit.loss, fit.accuracy = self.steps, 0, 0, 0.0, 0.0
        fire(self.callbacks, "on_epoch_begin", fit)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs, fit = logs or {}, self.fit
        fit.step, fit.images = batch + 1, round(self.images * (batch + 1) / self.steps)
        fit.loss, fit.accuracy = float(logs.get("loss", 0.0)), float(logs.get("accuracy", 0.0))
        fire(self.callbacks, "on_step_end", fit)
        if fit.interrupted:
            raise KeyboardInterrupt  # as Ctrl-C: the last finished epoch's checkpoint is kept

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.seconds is None:  # validation is not training time
            self.seconds = time.perf_counter() - self.started

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs, fit = logs or {}, self.fit
        seconds = self.seconds if self.seconds is not None else time.perf_counter() - self.started
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = history_row(epoch + 1, fit.stage.name, float(logs["loss"]), float(logs["accuracy"]),
                          logs.get("val_xent"), logs.get("val_accuracy"), rate, seconds, self.images)
        row["planned_epochs"] = fit.config.epochs  # no time budget here (refused), so no re-plan
        fit.history.append(row)
        fit.row, fit.last_epoch = row, epoch + 1 == self.plan_epochs
        self.engine.track_best(fit, row)
        fire(self.callbacks, "on_epoch_end", fit)
        if fit.interrupted:
            raise KeyboardInterrupt
        if fit.stop_reason:
            self.model.stop_training = True


class _StateWriter(keras.callbacks.Callback):
    """After ModelCheckpoint wrote ``epoch-N.keras``: record it in ``keras_state.json`` (atomically) and delete
    the checkpoints no longer needed (all but the last and the best).

    The state file is the commit point: a crash while Keras writes a new
    checkpoint leaves the state pointing at the previous, complete one.
    """

    def __init__(self, run: RunDirectory, fit: FitState) -> None:
        super().__init__()
        self.run, self.fit = run, fit

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        folder = self.run.last_checkpoint.parent
        latest = f"epoch-{epoch + 1:03d}.keras"
        best_file = f"epoch-{self.fit.best.epoch:03d}.keras"
        state = {"format": STATE_FORMAT, "stage": self.fit.stage_index, "checkpoint": latest,
                 "history": self.fit.history, "best": self.fit.best.state_dict(), "best_file": best_file}
        write_text_atomic(folder / STATE_FILE, json.dumps(state, indent=1))
        for old in folder.glob("epoch-*.keras"):
            if old.name not in (latest, best_file):
                old.unlink(missing_ok=True)
