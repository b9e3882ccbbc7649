"""The Python API: what the CLI does, callable with the same option names.

>>> import imgclf
>>> report = imgclf.inspect("photos/")            # doctest: +SKIP
>>> dataset = imgclf.load_dataset("photos/", val_fraction=0.2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.data.cache import build_cache
from imgclf.data.decode import DEFAULT_MAX_PIXELS, decode_file
from imgclf.data.inspect import InspectReport, inspect_dataset, sample_items
from imgclf.data.sources import ImageDataset, Item, load_source
from imgclf.data.splits import assign_splits
from imgclf.errors import ImgclfError
from imgclf.files import write_problem_list
from imgclf.pictures import save_image_grid
from imgclf.runs import slug

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.comparison import Comparison
    from imgclf.config import TrainConfig
    from imgclf.deploy.classifier import Classifier
    from imgclf.deploy.predict import PredictionRow
    from imgclf.evaluation.evaluate import Evaluation
    from imgclf.models import ModelInfo
    from imgclf.training import TrainResult

SAMPLE_GRID_SIZE = 160  # pixels per tile in sample pictures


def load_dataset(
    source: str | Path,
    *,
    archive: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_by: str | None = None,
) -> ImageDataset:
    """Read ``source`` (folder, CSV manifest, ``cifar10``/``cifar100``) and give every image a split.

    See :mod:`imgclf.data.splits` for which splits are carved and when.
    """
    dataset = load_source(source, Path(archive) if archive else None)
    return assign_splits(dataset, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                         group_by=group_by)


@dataclass
class InspectResult:
    """The report plus the files ``inspect`` wrote."""

    report: InspectReport
    out: Path
    samples: Path | None
    broken_list: Path | None


def inspect(
    source: str | Path,
    *,
    out: str | Path | None = None,
    archive: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> InspectResult:
    """Check every file of ``source`` and summarise the dataset as it is.

    Splits are reported as the data gives them (folders or a ``split``
    column; "unsplit" otherwise): carving a validation split is a training
    decision, and leakage is only meaningful between splits the user made.
    Writes ``report.json``, ``samples.png`` (the first images of each class)
    and, when files are broken, ``broken_files.txt`` into ``out`` (default
    ``inspect-<dataset name>/``).
    """
    dataset = load_source(source, Path(archive) if archive else None)
    cache = build_cache([item.path for item in dataset.items], size=None, max_pixels=max_pixels,
                        workers=workers, source=dataset.source, description="Checking images")
    report = inspect_dataset(dataset, cache)
    out_dir = Path(out) if out else Path(f"inspect-{slug(dataset.source, 'dataset')}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ImgclfError(f"--out {out_dir} is a file; give a folder for the inspect report")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    broken_list: Path | None = out_dir / "broken_files.txt"
    broken_list.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
    if report.broken:
        write_problem_list(broken_list, [(str(path), reason) for path, reason in report.broken])
    else:
        broken_list = None
    good = dataset.with_items([item for item, ok in zip(dataset.items, cache.ok) if ok])
    samples = save_samples(good, out_dir / "samples.png", max_pixels) if good.items else None
    return InspectResult(report=report, out=out_dir, samples=samples, broken_list=broken_list)


def save_samples(dataset: ImageDataset, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    size = (SAMPLE_GRID_SIZE, SAMPLE_GRID_SIZE)
    decoded = [(decode_file(item.path, size, policy="pad", max_pixels=max_pixels).pixels, " | ".join(item.labels))
               for item in sample_items(dataset)]
    shown = [(pixels, title) for pixels, title in decoded if pixels is not None]
    return save_image_grid([pixels for pixels, _ in shown], [title for _, title in shown], path,
                           title=f"{Path(dataset.source).name}: first images of each class")


def preview_augment(
    source: str | Path,
    out: str | Path = "augment-preview.png",
    *,
    augment: str = "standard",
    index: int = 0,
    seed: int = 0,
    image_size: int | None = None,
    archive: str | Path | None = None,
    grayscale: bool = False,
) -> Path:
    """Draw one training image augmented nine times, to see what a preset does."""
    from imgclf.data.augment_presets import augment_config

    augment_config(augment)  # an unknown preset fails before any file is read
    dataset = load_dataset(source, archive=archive, seed=seed)
    train = dataset.split_items("train") or dataset.items
    if not 0 <= index < len(train):
        raise ImgclfError(f"--index {index} is out of range; the training split has {len(train)} images (0..{len(train) - 1})")
    if image_size is not None and image_size < 1:
        raise ImgclfError(f"--image-size {image_size} must be a positive number of pixels, e.g. 224")
    out = Path(out) if Path(out).suffix else Path(out).with_suffix(".png")
    return draw_augmentations(train[index], out, augment=augment, seed=seed, image_size=image_size,
                              grayscale=grayscale)


def draw_augmentations(item: Item, out: Path, *, augment: str, seed: int = 0, image_size: int | None = None,
                       grayscale: bool = False) -> Path:
    """One image and eight augmented copies of it in a grid (``preview-augment``, and the run report)."""
    import torch

    from imgclf.data.augment import augment_batch
    from imgclf.data.augment_presets import augment_config

    config = augment_config(augment)
    probe = decode_file(item.path, grayscale=grayscale)
    if probe.error:
        raise ImgclfError(f"{item.path} cannot be decoded ({probe.error}); pick another --index")
    side = image_size if image_size is not None else min(224, max(probe.width, probe.height))
    pixels = decode_file(item.path, (side, side), grayscale=grayscale).pixels
    batch = torch.from_numpy(np.repeat(pixels[None], 9, axis=0))
    augmented = augment_batch(batch, config, torch.Generator().manual_seed(seed))
    tiles = [tile.permute(1, 2, 0).clamp(0, 1).numpy() for tile in augmented]
    titles = ["original"] + [f"{augment} #{k}" for k in range(1, 9)]
    tiles[0] = pixels
    return save_image_grid(tiles, titles, out, title=f"{item.path.name} ({item.label}), augment={augment}")


def train(
    data: str | Path | None = None,
    *,
    config: str | Path | None = None,
    archive: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    dry_run: bool = False,
    **options: object,
) -> TrainResult | TrainConfig:
    """Train a classifier on ``data``; every option is a :class:`~imgclf.config.TrainConfig` field.

    >>> run = imgclf.train("photos/", epochs=5)       # doctest: +SKIP
    >>> run.metrics["test_accuracy"]                  # doctest: +SKIP

    ``config`` is a YAML file of the same names (explicit options win);
    ``resume`` continues an interrupted run exactly; ``dry_run`` returns the
    resolved :class:`TrainConfig` without training.
    """
    from imgclf.config import make_config
    from imgclf.training import plan
    from imgclf.training import train as run_training

    if resume is not None:
        if data is not None or options or config is not None:
            raise ImgclfError("--resume continues a run with its saved config; drop the other options")
        return run_training(make_config(), resume=resume)
    settings = make_config(config, **({"data": str(data)} if data is not None else {}), **options)
    if dry_run:
        return plan(settings, archive)[0]
    return run_training(settings, archive=archive, overwrite=overwrite)


def load(path: str | Path, device: str = "auto", precision: str = "auto", tta: bool | None = None) -> Classifier:
    """A classifier from a bundle folder or a run directory: ``load("runs/shop").predict("cat.jpg")``.

    ``precision`` ``auto`` is bf16 on CPUs with bf16 instructions (as in
    training); ``tta`` (flip averaging) defaults to what the model trained with.
    """
    from imgclf.deploy.classifier import Classifier

    return Classifier.load(path, device=device, precision=precision, tta=tta)


def models(filter: str = "") -> list[ModelInfo]:
    """Every model name ``train`` accepts (ours and timm's) matching ``filter``, with weight availability."""
    from imgclf.models import list_models

    return list_models(filter)


def evaluate(model: str | Path, data: str | Path | None = None, *, out: str | Path | None = None,
             split: str | None = None, tta: bool | None = None, label_issues: bool = False,
             folds: int | None = None, batch_size: int = 64, device: str = "auto") -> Evaluation:
    """Metrics, pictures and (with ``label_issues``) likely label errors of ``model`` on labelled images.

    ``data`` is any source; by default the run's own test split (validation
    if it has none). Writes ``metrics.json`` and PNGs to ``out`` (default
    ``RUN/evaluation`` for a run's own split, else ``evaluation-<data name>``).
    ``folds`` finds label issues from K-fold cross-validated predictions
    (K models retrained with the bundle's recipe) instead.
    """
    from imgclf.deploy.bundle import find_bundle
    from imgclf.deploy.classifier import Classifier
    from imgclf.evaluation.evaluate import evaluate as run_evaluation
    from imgclf.evaluation.evaluate import evaluation_items

    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    items, chosen = evaluation_items(model, data, split)
    classifier = Classifier.load(model, device=device, tta=tta)
    if out is None:
        out = find_bundle(model).parent / "evaluation" if data is None else Path(f"evaluation-{slug(str(data), 'data')}")
    return run_evaluation(classifier, items, chosen, Path(out), label_issues=label_issues, folds=folds,
                          batch_size=batch_size)


def predict(model: str | Path, inputs: str | Path | list[str | Path], *, top_k: int = 5, min_confidence: float = 0.0,
            tta: bool | None = None, batch_size: int = 64, device: str = "auto") -> Iterator[PredictionRow]:
    """Stream a :class:`~imgclf.deploy.predict.PredictionRow` per image for files, folders, globs or @lists."""
    from imgclf.deploy.classifier import Classifier
    from imgclf.deploy.predict import expand_inputs

    if not 0.0 <= min_confidence <= 1.0:
        raise ImgclfError(f"--min-confidence must be a probability between 0 and 1, got {min_confidence}")
    if top_k < 1:
        raise ImgclfError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    paths = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    classifier = Classifier.load(model, device=device, tta=tta)
    return classifier.predict_files(paths, top_k=top_k, min_confidence=min_confidence, batch_size=batch_size)


def compare(data: str | Path, *, backends: str | list[str] = "torch,tensorflow", model: str = "tutorial-cnn",
            epochs: float = 10, out: str | Path | None = None, overwrite: bool = False,
            archive: str | Path | None = None, **options: object) -> Comparison:
    """Train ``model`` on each backend with the same recipe, seed and split; write ``OUT/comparison.html``.

    >>> imgclf.compare("photos/", epochs=10).html     # doctest: +SKIP
    """
    from imgclf.comparison import compare as run_comparison
    from imgclf.comparison import parse_backends

    names = parse_backends(backends if isinstance(backends, str) else ",".join(backends))
    return run_comparison(data, backends=names, model=model, epochs=epochs, out=out, overwrite=overwrite,
                          archive=archive, **options)


def report(run: str | Path, *, label_issues: bool = True) -> Path:
    """Re-evaluate a run on its held-out split and rewrite its ``report.html``; returns the report's path."""
    from imgclf.evaluation.run_report import report_run

    return report_run(run, label_issues=label_issues)[0]
