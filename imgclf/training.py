"""``train``: from a data source and a config to a run directory with a model bundle.

The steps, in order: read the data and its split; choose every default
from the data (:mod:`imgclf.recipes`); create the run directory; decode
once into the cache; build the model (pretrained weights, whitening);
fit the schedule to ``--time-budget`` if one is given; train with the
PyTorch engine; evaluate on val and test; write the bundle and a summary.
``--resume RUN`` re-enters the same steps from the run's saved config,
split and last checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.backends import check_backend, keras_model_name, require_tensorflow
from imgclf.config import TrainConfig, parse_duration
from imgclf.console import console
from imgclf.data.inspect import imbalance_warning
from imgclf.data.sources import ImageDataset, read_manifest, write_manifest
from imgclf.errors import ImgclfError
from imgclf.files import write_problem_list
from imgclf.recipes import DataFacts, model_family, resolve
from imgclf.runs import RunDirectory, new_run_directory

if TYPE_CHECKING:  # torch loads only when training starts
    import torch
    from torch import nn

    from imgclf.engines.keras_engine import KerasTrainer
    from imgclf.engines.torch_engine import FitResult, Trainer, TrainingData

SIZE_SAMPLE = 256  # images whose header is read to choose the image size
STATS_SAMPLE = 5000  # training images whose pixels give the normalisation of a from-scratch model


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    model_dir: Path | None
    config: TrainConfig
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    interrupted: bool = False


def data_facts(dataset: ImageDataset) -> DataFacts:
    """Training-split size and median image side (from a sample of file headers)."""
    from imgclf.data.decode import peek_size

    train = dataset.split_items("train")
    step = max(1, len(train) // SIZE_SAMPLE)
    sides = [max(size) for item in train[::step][:SIZE_SAMPLE] if (size := peek_size(item.path))]
    if not train:
        raise ImgclfError(f"{dataset.source}: no training images; check the folder layout (see README, Data)")
    if not sides:
        raise ImgclfError(f"{dataset.source}: none of the sampled training images could be read; run imgclf inspect")
    return DataFacts(train_images=len(train), median_side=int(median(sides)),
                     multilabel=dataset.multilabel)


def plan(config: TrainConfig, archive: str | Path | None = None) -> tuple[TrainConfig, ImageDataset]:
    """The resolved config and the split dataset, without training (``--dry-run``)."""
    from imgclf.api import load_dataset
    from imgclf.models import model_info, pretrained_source

    if not config.data:
        raise ImgclfError("no data given; pass a folder, a CSV manifest or cifar10 (imgclf train DATA)")
    source: Callable[[str], str | None] = pretrained_source
    if config.backend == "tensorflow":
        # Keras models by name (the seed's CNN by default); pretrained only when asked for
        require_tensorflow()
        config = replace(config, model=keras_model_name(config.model or "tutorial-cnn"))
        source = _no_local_weights
    elif config.model is not None:
        model_info(config.model)  # an unknown name fails now, with the closest names, not after decoding
    dataset = load_dataset(config.data, archive=archive, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, seed=config.seed, group_by=config.group_by)
    if len(dataset.classes) < 2:
        raise ImgclfError(f"{dataset.source}: found {len(dataset.classes)} class; a classifier needs at least 2")
    resolved = resolve(config, data_facts(dataset), source)
    check_backend(resolved, dataset.multilabel)
    return resolved, dataset


def _no_local_weights(name: str) -> None:
    """Keras downloads ImageNet weights on demand: none are assumed present unless --pretrained asks."""
    return None


def train(config: TrainConfig, *, archive: str | Path | None = None, overwrite: bool = False,
          resume: str | Path | None = None, report: bool = True) -> TrainResult:
    """Train as ``config`` says (or continue the run at ``resume``) and write the bundle (and ``report.html``)."""
    resuming = resume is not None
    if resume is not None:
        run = RunDirectory(Path(resume))
        config = run.read_config()
        dataset = read_manifest(run.split_file)
    else:
        config, dataset = plan(config, archive)
        run = new_run_directory(config.out, dataset.source, overwrite)
        config = replace(config, out=str(run.path))
        run.write_config(config)
        write_manifest(dataset, run.split_file)
    imbalance = imbalance_warning(dataset.split_items("train"))
    if imbalance:
        console.print(f"[yellow]warning: {imbalance}[/]")
    if config.backend == "tensorflow":
        trainer, result, config = _fit_keras(config, dataset, run, resuming)
    else:
        trainer, result, config = _fit_torch(config, dataset, run, resuming)
    if result.interrupted:
        console.print(f"[yellow]interrupted; checkpoint saved. Continue with: imgclf train --resume {run.path}[/]")
        return TrainResult(run.path, None, config, result.history, {}, interrupted=True)
    metrics = _final_metrics(trainer, result, config)
    model_dir = _write_bundle(run, config, trainer.data, result.model, metrics)
    metrics.update(_calibrate(model_dir, trainer.data))
    _print_summary(run, config, result, metrics)
    if report and not trainer.data.multilabel:
        from imgclf.evaluation.run_report import report_run

        page, _ = report_run(run.path)
        console.print(f"report: {page}")
    return TrainResult(run.path, model_dir, config, result.history, metrics)


def _fit_torch(config: TrainConfig, dataset: ImageDataset, run: RunDirectory, resuming: bool
               ) -> tuple[Trainer, FitResult, TrainConfig]:
    import torch

    from imgclf.engines.checkpoint import load_checkpoint
    from imgclf.engines.device import choose_device, choose_precision

    checkpoint = None
    if resuming:
        if run.last_checkpoint.exists():
            checkpoint = load_checkpoint(run.last_checkpoint)
            console.print(f"resuming {run.path} at epoch {len(checkpoint['history']) + 1}")
        else:  # stopped before the first checkpoint (e.g. while decoding): start over with the saved split
            console.print(f"{run.path} has no checkpoint yet; starting its training from the beginning")
    device = choose_device(config.device)
    precision = choose_precision(config.precision, device)
    data = _decode(dataset, config, run)
    torch.manual_seed(config.seed)
    model, mean, std = _build_model(config, data, checkpoint)
    data.mean, data.std = mean, std
    trainer = _trainer(model, data, config, run, device, precision)
    if config.time_budget and checkpoint is None:
        config = _fit_to_budget(config, trainer)
        run.write_config(config)
        trainer = _trainer(model, data, config, run, device, precision)
    _print_start(config, data, f"{device.type} {precision}")
    with _tensorboard(run) as on_epoch:
        return trainer, trainer.fit(resume=checkpoint, on_epoch=on_epoch), config


def _fit_keras(config: TrainConfig, dataset: ImageDataset, run: RunDirectory, resuming: bool
               ) -> tuple[KerasTrainer, FitResult, TrainConfig]:
    """The TensorFlow engine on the same decoded cache; its callbacks write checkpoints and TensorBoard."""
    from imgclf.backends import require_tensorflow

    require_tensorflow()
    from imgclf.engines.keras_engine import KerasTrainer, keras_normalisation

    data = _decode(dataset, config, run)
    data.mean, data.std = keras_normalisation(1 if config.grayscale else 3)
    trainer = KerasTrainer(data, config, run)
    _print_start(config, data, "tensorflow cpu fp32")
    return trainer, trainer.fit(resume=resuming), config


def _print_start(config: TrainConfig, data: TrainingData, machine: str) -> None:
    console.print(f"training {config.model} ({config.strategy}) on {len(data.rows['train']):,} images at "
                  f"{config.image_size}px, {config.epochs:g} epochs, batch {config.batch_size}, {machine}")


def _decode(dataset: ImageDataset, config: TrainConfig, run: RunDirectory) -> TrainingData:
    import torch

    from imgclf.data.cache import build_cache
    from imgclf.data.decode import DEFAULT_MAX_PIXELS
    from imgclf.engines.torch_engine import TrainingData

    size = (config.image_size, config.image_size)
    cache = build_cache([item.path for item in dataset.items], size=size, policy=config.resize,  # type: ignore[arg-type]
                        grayscale=config.grayscale, max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS,
                        workers=config.workers, source=dataset.source)
    broken = cache.broken()
    if broken:
        write_problem_list(run.path / "broken_files.txt", [(str(path), reason) for path, reason in broken])
        console.print(f"[yellow]skipped {len(broken)} unreadable image(s); listed in {run.path / 'broken_files.txt'}[/]")
    ok = cache.ok
    rows = {split: np.array([index for index, item in enumerate(dataset.items) if item.split == split and ok[index]],
                            dtype=np.int64) for split in ("train", "val", "test")}
    if not len(rows["train"]):
        raise ImgclfError(f"{dataset.source}: no training image could be decoded; run imgclf inspect to see why")
    index = {name: position for position, name in enumerate(dataset.classes)}
    if dataset.multilabel:
        targets = torch.zeros(len(dataset.items), len(dataset.classes))
        for row, item in enumerate(dataset.items):
            targets[row, [index[label] for label in item.labels]] = 1.0
    else:
        targets = torch.tensor([index[item.labels[0]] for item in dataset.items], dtype=torch.int64)
    return TrainingData(pixels=cache.pixels, rows=rows, targets=targets, classes=list(dataset.classes),
                        multilabel=dataset.multilabel, mean=(0.0,), std=(1.0,),
                        paths=[item.path for item in dataset.items])


def _build_model(config: TrainConfig, data: TrainingData, checkpoint: dict[str, Any] | None
                 ) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The model and the input normalisation it expects (the weights' own, or the data's statistics)."""
    import torch

    from imgclf.models import create_model, load_pretrained

    channels = 1 if config.grayscale else 3
    model = create_model(config.model, len(data.classes), in_chans=channels, image_size=config.image_size,
                         **{**config.model_args, **regularisation_args(config)})
    if config.pretrained and checkpoint is None:
        weights = load_pretrained(model, config.model, Path(config.weights) if config.weights else None)
        console.print(f"pretrained weights: {weights.source}")
        return model, tuple(weights.mean[:channels]), tuple(weights.std[:channels])
    if model_family(config.model) == "tutorial-cnn":
        mean, std = (0.0,) * channels, (1.0,) * channels  # the seed tutorial's Rescaling(1/255)
    else:
        train = data.rows["train"]  # rows are sorted by class: a strided sample covers every class
        picked = train[np.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).astype(np.int64)]
        sample = data.pixels[np.unique(picked)].astype(np.float32) / 255.0
        mean = tuple(float(v) for v in sample.mean(axis=(0, 1, 2)))
        std = tuple(max(float(v), 1e-3) for v in sample.std(axis=(0, 1, 2)))
        if hasattr(model, "init_whitening") and not config.pretrained:
            # also on resume: it decides which weights are frozen; the checkpoint then sets their values
            images = torch.from_numpy(sample).permute(0, 3, 1, 2)
            model.init_whitening((images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    if checkpoint is not None:
        return model, tuple(checkpoint["normalisation"]["mean"]), tuple(checkpoint["normalisation"]["std"])
    return model, mean, std


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


def _trainer(model: nn.Module, data: TrainingData, config: TrainConfig, run: RunDirectory, device: torch.device,
             precision: str) -> Trainer:

    from imgclf.engines.torch_engine import Trainer

    class_weights = None
    if config.class_weights == "auto":
        train_targets = data.split_targets("train")
        if data.multilabel:
            positives = train_targets.sum(dim=0).clamp(min=1)
            class_weights = (len(train_targets) - positives).clamp(min=1) / positives
        else:
            counts = data.class_counts("train").float().clamp(min=1)
            class_weights = counts.sum() / (len(counts) * counts)
    embedding_weights = None
    if config.pretrained:
        from imgclf.engines.linear_probe import weights_fingerprint
        from imgclf.models import pretrained_source

        found = weights_fingerprint(config.weights) or pretrained_source(config.model or "") or config.weights
        embedding_weights = str(found) if found else None
    return Trainer(model, data, config, run, device, precision, class_weights, embedding_weights)


def _fit_to_budget(config: TrainConfig, trainer: Trainer) -> TrainConfig:
    """Epochs that fit ``--time-budget``, from the measured speed of a few steps of each stage.

    Warm-up and probe epochs keep their share of the schedule, so the whole
    schedule (not just its length) is fitted to the budget.
    """
    budget = parse_duration(config.time_budget or "0")
    started = time.perf_counter()
    steps_per_epoch = len(trainer.train_loader)
    val_rows = len(trainer.data.rows["val"])
    forward_per_image: dict[str, float] = {}  # seconds of one forward pass per image, by stage kind
    epoch_seconds: dict[str, float] = {}
    for stage in trainer.stages:
        if stage.trainable in epoch_seconds or (stage.trainable == "head" and trainer.uses_linear_probe):
            continue
        step = trainer.measure_step_seconds(stage)
        forward_per_image[stage.trainable] = step / config.batch_size / (1 if stage.trainable == "head" else 3)
        epoch_seconds[stage.trainable] = steps_per_epoch * step + val_rows * forward_per_image[stage.trainable]
    left = budget - (time.perf_counter() - started)
    if trainer.uses_linear_probe:
        # the probe is one embedding pass over train + val (about a third of a training step per image)
        # and a fit of a second or two, whatever its epochs; only fine-tuning scales with the budget
        finetune = epoch_seconds.get("all")
        if finetune is None:  # a probe alone: nothing to fit to the budget
            return config
        probe_epochs = config.probe_epochs or 1.0
        probe = 0.0 if trainer.embeddings_cached() else (
            (len(trainer.data.rows["train"]) + val_rows) * forward_per_image["all"])
        epochs = probe_epochs + max(round((left - probe) / finetune, 1), 0.1)
        console.print(f"time budget {config.time_budget}: probe about {probe:.0f} s, fine-tuning "
                      f"{finetune:.1f} s per epoch measured; training {epochs:g} epochs")
        return replace(config, epochs=epochs, warmup_epochs=round((config.warmup_epochs or 0.0) * epochs / config.epochs, 2))
    shares = {stage.trainable: stage.epochs / config.epochs for stage in trainer.stages}
    per_epoch = sum(shares[kind] * seconds for kind, seconds in epoch_seconds.items())
    epochs = max(round(left / per_epoch, 1), 0.1)
    if config.strategy == "two-stage":
        epochs = max(epochs, 2.0)
    scale = epochs / config.epochs
    console.print(f"time budget {config.time_budget}: {per_epoch:.1f} s per epoch measured; training {epochs:g} epochs")
    return replace(config, epochs=epochs,
                   warmup_epochs=round((config.warmup_epochs or 0.0) * scale, 2),
                   probe_epochs=None if config.probe_epochs is None else max(1.0, round(config.probe_epochs * scale, 1)))


def _final_metrics(trainer: Trainer | KerasTrainer, result: FitResult, config: TrainConfig) -> dict[str, Any]:
    metrics: dict[str, Any] = {"epochs_trained": len(result.history), "best_epoch": result.best_epoch,
                               "train_seconds": round(sum(row["seconds"] for row in result.history), 2),
                               "parameters": _parameter_count(result.model, config.backend)}
    for split in ("val", "test"):
        if len(trainer.data.rows[split]):
            scores = trainer.evaluate(split, model=result.model, tta=bool(config.tta))
            metrics[f"{split}_loss"] = round(scores["loss"], 6)
            metrics[f"{split}_accuracy"] = round(scores["accuracy"], 6)
            metrics[f"{split}_images"] = len(trainer.data.rows[split])
    return metrics


def _parameter_count(model: Any, backend: str) -> int:
    """Learnable values (BatchNorm running statistics excluded), the figure compare checks across backends."""
    if backend == "tensorflow":
        from imgclf.models.keras_models import count_parameters

        return count_parameters(model)
    return sum(parameter.numel() for parameter in model.parameters())


def _write_bundle(run: RunDirectory, config: TrainConfig, data: TrainingData, model: Any,
                  metrics: dict[str, Any]) -> Path:
    from imgclf.deploy.bundle import BundleInfo, write_bundle, write_keras_bundle

    info = BundleInfo(architecture=config.model or "", model_args=dict(config.model_args), classes=data.classes,
                      image_size=config.image_size or 0, mean=list(data.mean), std=list(data.std),
                      multilabel=data.multilabel, channels=1 if config.grayscale else 3, resize=config.resize,
                      tta=bool(config.tta), backend=config.backend, config=config.to_dict(), metrics=metrics)
    if config.backend == "tensorflow":
        return write_keras_bundle(info, model, run.model_dir)
    return write_bundle(info, model.state_dict(), run.model_dir)


def _calibrate(model_dir: Path, data: TrainingData) -> dict[str, Any]:
    """Temperature scaling on the validation split, stored in the bundle (nothing for multi-label or no val)."""
    from imgclf.evaluation.calibration import calibrate_bundle

    val = data.rows["val"]
    if data.multilabel or len(val) < 2:
        return {}
    calibration = calibrate_bundle(model_dir, data.pixels[val], data.targets[val].numpy())
    return {"calibration": asdict(calibration)}


def _print_summary(run: RunDirectory, config: TrainConfig, result: FitResult, metrics: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{config.model} on {Path(config.data).name}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    seconds = metrics["train_seconds"]
    table.add_row("epochs", f"{metrics['epochs_trained']} (best {metrics['best_epoch']})"
                  + (", stopped early" if result.stopped_early else ""))
    table.add_row("training time", f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min")
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            tta = " (TTA)" if config.tta else ""
            table.add_row(f"{split} accuracy{tta}", f"{metrics[f'{split}_accuracy']:.2%} of {metrics[f'{split}_images']:,}")
            table.add_row(f"{split} loss", f"{metrics[f'{split}_loss']:.4f}")
    if "calibration" in metrics:
        calibration = metrics["calibration"]
        table.add_row("val ECE (temperature)", f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} "
                                               f"(T = {calibration['temperature']:.3f})")
    table.add_row("run", str(run.path))
    table.add_row("model", str(run.model_dir))
    console.print(table)


class _tensorboard:
    """Per-epoch scalars to TensorBoard; a context manager so the event file is always closed."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run
        self.writer: Any = None

    def __enter__(self) -> Any:
        from imgclf.console import native_stderr_silenced

        with native_stderr_silenced():  # TensorBoard imports TensorFlow when it is installed
            from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run.tensorboard_dir))
        return self.write

    def write(self, row: dict[str, Any]) -> None:
        for name, value in row.items():
            if isinstance(value, (int, float)) and name != "epoch" and value is not None and math.isfinite(value):
                group = "val" if name.startswith("val_") else "train"
                self.writer.add_scalar(f"{group}/{name.removeprefix('val_').removeprefix('train_')}", value,
                                       row["epoch"])
        self.writer.flush()

    def __exit__(self, *exc: object) -> None:
        self.writer.close()
