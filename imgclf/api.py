"""The Python API: what the CLI does, callable with the same option names.

>>> import imgclf
>>> report = imgclf.inspect("photos/")            # doctest: +SKIP
>>> dataset = imgclf.load_dataset("photos/", val_fraction=0.2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.data.cache import ImageCache, build_cache
from imgclf.data.decode import DEFAULT_MAX_PIXELS
from imgclf.data.inspect import InspectReport, inspect_dataset, near_duplicate_warnings
from imgclf.data.sources import ImageDataset, load_source
from imgclf.data.splits import load_dataset
from imgclf.errors import ImgclfError
from imgclf.files import atomic_path, write_problem_list
from imgclf.pictures import draw_augmentations, save_samples
from imgclf.runs import slug

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.config import TrainConfig
    from imgclf.deploy.calibration import Calibration
    from imgclf.deploy.classifier import Classifier
    from imgclf.deploy.explain import Explanation
    from imgclf.deploy.export import ExportResult
    from imgclf.deploy.predict import PredictionRow
    from imgclf.deploy.predict_parts import PartsSummary
    from imgclf.embeddings.embedder import FileEmbeddings
    from imgclf.embeddings.index import Neighbour, SimilarityIndex
    from imgclf.embeddings.match_batch import BatchSummary
    from imgclf.embeddings.match_evaluation import MatchEvaluation
    from imgclf.embeddings.near_duplicates import NearDuplicatePair
    from imgclf.embeddings.suggest import CatalogMatcher, Suggestion
    from imgclf.engines.callbacks import Callback
    from imgclf.evaluation.evaluate import Evaluation
    from imgclf.models import ModelInfo
    from imgclf.training import TrainResult
    from imgclf.workflows.comparison import Comparison
    from imgclf.workflows.ensemble import EnsembleResult
    from imgclf.workflows.tune import TuneResult

log = logging.getLogger(__name__)


DEFAULT_EMBEDDING_MODEL = "tf_efficientnet_lite0"  # ImageNet weights installed with imgclf: works offline


@dataclass
class InspectResult:
    """The report plus the files ``inspect`` wrote."""

    report: InspectReport
    out: Path
    samples: Path | None
    broken_list: Path | None
    near_duplicates_picture: Path | None = None


def inspect(
    source: str | Path,
    *,
    out: str | Path | None = None,
    archive: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    near_duplicates: bool = False,
    embedding_model: str | Path = DEFAULT_EMBEDDING_MODEL,
    similarity_threshold: float | None = None,
) -> InspectResult:
    """Check every file of ``source`` and summarise the dataset as it is.

    Splits are reported as the data gives them (folders or a ``split``
    column; "unsplit" otherwise): carving a validation split is a training
    decision, and leakage is only meaningful between splits the user made.
    Writes ``report.json``, ``samples.png`` (the first images of each class)
    and, when files are broken, ``broken_files.txt`` into ``out`` (default
    ``inspect-<dataset name>/``).

    ``near_duplicates`` also embeds every image with ``embedding_model`` and
    reports pairs at least ``similarity_threshold`` alike that are not the
    same bytes (resized, re-encoded, mirrored copies), across splits
    (leakage) and within them, drawn in ``near_duplicates.png``.
    """
    dataset = load_source(source, Path(archive) if archive else None)
    cache = build_cache([item.path for item in dataset.items], size=None, max_pixels=max_pixels,
                        workers=workers, source=dataset.source, description="Checking images")
    report = inspect_dataset(dataset, cache)
    out_dir = Path(out) if out else Path(f"inspect-{slug(dataset.source, 'dataset')}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ImgclfError(f"--out {out_dir} is a file; give a folder for the inspect report")
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = out_dir / "near_duplicates.png"
    picture.unlink(missing_ok=True)
    if near_duplicates:
        pairs = _near_duplicates(dataset, cache, embedding_model, similarity_threshold)
        report.near_duplicates = [pair.to_json() for pair in pairs]
        report.warnings += near_duplicate_warnings(report.near_duplicates)
        if pairs:
            from imgclf.embeddings.near_duplicates import draw_pairs

            draw_pairs(pairs, picture)
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    broken_file = out_dir / "broken_files.txt"
    broken_file.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
    if report.broken:
        write_problem_list(broken_file, [(str(path), reason) for path, reason in report.broken])
    broken_list = broken_file if report.broken else None
    good = dataset.with_items([item for item, ok in zip(dataset.items, cache.ok) if ok])
    samples = save_samples(good, out_dir / "samples.png", max_pixels) if good.items else None
    return InspectResult(report=report, out=out_dir, samples=samples, broken_list=broken_list,
                         near_duplicates_picture=picture if picture.exists() else None)


def _near_duplicates(dataset: ImageDataset, cache: ImageCache, model: str | Path, threshold: float | None
                     ) -> list[NearDuplicatePair]:
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.near_duplicates import find_near_duplicates
    from imgclf.embeddings.similarity import NEAR_DUPLICATE

    threshold = NEAR_DUPLICATE if threshold is None else threshold
    if not 0.0 < threshold <= 1.0:
        raise ImgclfError(f"--similarity-threshold {threshold:g} must be in (0, 1]; near-duplicates score about "
                          f"{NEAR_DUPLICATE:g} or more")
    readable = np.flatnonzero(cache.ok)
    items = [dataset.items[index] for index in readable]
    embedded = Embedder.load(model).embed_files([item.path for item in items],
                                                description="Embedding for near-duplicates")
    keep = np.flatnonzero(embedded.ok)
    return find_near_duplicates([items[i] for i in keep], embedded.vectors[keep],
                                [str(cache.digests[readable[i]]) for i in keep], threshold)


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


def train(
    data: str | Path | None = None,
    *,
    config: str | Path | None = None,
    archive: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    dry_run: bool = False,
    callbacks: list[Callback] | None = None,
    **options: object,
) -> TrainResult | TrainConfig:
    """Train a classifier on ``data`` and write its ``report.html``; every option is a :class:`~imgclf.config.TrainConfig` field.

    >>> run = imgclf.train("photos/", epochs=5)       # doctest: +SKIP
    >>> run.metrics["test_accuracy"]                  # doctest: +SKIP

    ``config`` is a YAML file of the same names (explicit options win);
    ``resume`` continues an interrupted run exactly; ``dry_run`` returns the
    resolved :class:`TrainConfig` without training; ``callbacks`` (subclasses
    of :class:`imgclf.engines.callbacks.Callback`) see every training event.
    """
    from imgclf.config import make_config
    from imgclf.distributed import current_world
    from imgclf.runs import RunDirectory
    from imgclf.training import plan
    from imgclf.training import train as run_training
    from imgclf.workflows.tracking import check_tracker, tracked_run

    if resume is not None:
        if data is not None or options or config is not None:
            raise ImgclfError("--resume continues a run with its saved config; drop the other options")
        settings = RunDirectory(Path(resume)).read_config()
    else:
        settings = make_config(config, **({"data": str(data)} if data is not None else {}), **options)
    if dry_run and resume is None:
        return plan(settings, archive)[0]
    check_tracker(settings.track)  # a missing MLflow is said before the data is read
    name = Path(resume).name if resume is not None else Path(settings.out or str(settings.data)).name
    track = settings.track if current_world().is_main else None  # under torchrun, rank 0 alone logs
    with tracked_run(track, name, tags={"command": "train"}) as tracker:
        mine = [*(callbacks or []), *tracker.callbacks()]
        if resume is not None:
            result = _reported(run_training(make_config(), resume=resume, callbacks=mine))
        else:
            result = _reported(run_training(settings, archive=archive, overwrite=overwrite, callbacks=mine))
        tracker.log_training(result)
    return result


def train_processes(nproc: int, arguments: list[str], data: str | Path | None = None, *,
                    config: str | Path | None = None, archive: str | Path | None = None,
                    resume: str | Path | None = None, **options: object) -> int:
    """``imgclf train --nproc N``: check the run here, then run ``arguments`` as N torchrun processes; the exit code.

    The checks (data, options, backend, enough GPUs) run once, before any
    process starts, so a mistake is one line rather than N.
    """
    from imgclf.config import make_config
    from imgclf.distributed import check_nproc_device, launch, torchrun_command
    from imgclf.engines.registry import get_backend
    from imgclf.runs import RunDirectory
    from imgclf.training import plan

    torchrun_command(nproc, arguments)  # refuses --nproc below 1
    settings = (RunDirectory(Path(resume)).read_config() if resume is not None
                else make_config(config, **({"data": str(data)} if data is not None else {}), **options))
    get_backend(settings.backend).check_processes(nproc)
    check_nproc_device(nproc, settings.device)
    if resume is None:
        plan(settings, archive)  # the data and every option, checked once
    return launch(nproc, arguments)


def _reported(run: TrainResult) -> TrainResult:
    """Write the run's ``report.html`` once it finished (workflows that train many runs call training directly)."""
    from imgclf.evaluation.run_report import report_run

    if run.model_dir is not None and not run.interrupted:  # no bundle on ranks other than 0
        page, _ = report_run(run.run_dir, known=run.held_out_probabilities)
        log.info(f"report: {page}")
    return run


def load(path: str | Path, device: str = "auto", precision: str = "auto", tta: bool | None = None,
         runtime: str = "auto") -> Classifier:
    """A classifier from a bundle folder or a run directory: ``load("runs/shop").predict("cat.jpg")``.

    ``precision`` ``auto`` is bf16 on CPUs with bf16 instructions (as in
    training); ``tta`` (flip averaging) defaults to what the model trained with;
    ``runtime`` is ``torch`` (``keras`` for a TensorFlow model), ``onnx``, ``onnx-int8`` or ``auto`` (see
    :func:`export`).
    """
    from imgclf.deploy.classifier import Classifier

    return Classifier.load(path, device=device, precision=precision, tta=tta, runtime=runtime)


def models(filter: str = "") -> list[ModelInfo]:
    """Every model name ``train`` accepts (ours and timm's) matching ``filter``, with weight availability."""
    from imgclf.models import list_models

    return list_models(filter)


def evaluate(model: str | Path, data: str | Path | None = None, *, out: str | Path | None = None,
             split: str | None = None, tta: bool | None = None, label_issues: bool = False,
             folds: int | None = None, batch_size: int = 64, device: str = "auto", runtime: str = "auto",
             track: str | None = None) -> Evaluation:
    """Metrics, pictures and (with ``label_issues``) likely label errors of ``model`` on labelled images.

    ``data`` is any source; by default the run's own test split (validation
    if it has none). Writes ``metrics.json`` and PNGs to ``out`` (default
    ``RUN/evaluation`` for a run's own split, else ``evaluation-<data name>``).
    ``folds`` finds label issues from K-fold cross-validated predictions
    (K models retrained with the bundle's recipe) instead. ``track="mlflow"``
    logs the figures and pictures as an MLflow run (see :mod:`imgclf.workflows.tracking`).
    """
    from imgclf.deploy.bundle import find_bundle
    from imgclf.deploy.classifier import Classifier
    from imgclf.evaluation.evaluate import evaluate as run_evaluation
    from imgclf.evaluation.evaluate import evaluation_items
    from imgclf.workflows.cross_validation import CrossValidation
    from imgclf.workflows.tracking import check_tracker, tracked_run

    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    check_tracker(track)
    items, chosen = evaluation_items(model, data, split)
    classifier = Classifier.load(model, device=device, tta=tta, runtime=runtime, batch_size=batch_size)
    if out is None:
        out = find_bundle(model).parent / "evaluation" if data is None else Path(f"evaluation-{slug(str(data), 'data')}")
    with tracked_run(track, f"evaluate {Path(model).name}", tags={"command": "evaluate"}) as tracker:
        tracker.log_params({"model": str(model), "data": str(data) if data is not None else "its run's split",
                            "split": chosen, "runtime": runtime, "tta": classifier.tta})
        evaluation = run_evaluation(classifier, items, chosen, Path(out), label_issues=label_issues,
                                    out_of_fold=CrossValidation(folds) if folds else None, batch_size=batch_size)
        tracker.log_metrics({name: value for name, value in evaluation.metrics.items() if name != "confusion_matrix"})
        tracker.log_artifacts([Path(out)])
    return evaluation


def predict(model: str | Path, inputs: str | Path | Sequence[str | Path], *, top_k: int = 5, min_confidence: float = 0.0,
            tta: bool | None = None, batch_size: int = 64, device: str = "auto", runtime: str = "auto"
            ) -> Iterator[PredictionRow]:
    """Stream a :class:`~imgclf.deploy.predict.PredictionRow` per image for files, folders, globs or @lists."""
    from imgclf.deploy.classifier import Classifier
    from imgclf.deploy.predict import expand_inputs

    _check_predict_options(top_k, min_confidence, batch_size)
    paths = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    classifier = Classifier.load(model, device=device, tta=tta, runtime=runtime, batch_size=batch_size)
    return classifier.predict_files(paths, top_k=top_k, min_confidence=min_confidence, batch_size=batch_size)


def predict_in_parts(model: str | Path, inputs: str | Path | Sequence[str | Path], output_format: str,
                     out: str | Path | None = None, *, top_k: int = 5, min_confidence: float = 0.0,
                     tta: bool | None = None, batch_size: int = 64, device: str = "auto", runtime: str = "auto"
                     ) -> PartsSummary | None:
    """``predict`` as one rank of a torchrun job, written as ``output_format`` to ``out`` (default: stdout).

    Each rank classifies its share of the inputs into parts beside ``out``;
    rank 0 joins them in input order and returns the summary, the other
    ranks return None. A rerun of a killed job skips the finished parts. In
    a plain process (a world of one) it writes the same output in one part.
    """
    from imgclf import distributed
    from imgclf.deploy.predict import expand_inputs
    from imgclf.deploy.predict_parts import predict_in_parts as run_in_parts

    _check_predict_options(top_k, min_confidence, batch_size)
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    check_distributable(model, entries)
    world = distributed.start(distributed.rank_device(device, distributed.current_world()))
    try:
        return run_in_parts(model, expand_inputs(entries), output_format, Path(out) if out else None, world,
                            top_k=top_k, min_confidence=min_confidence, tta=tta, batch_size=batch_size,
                            runtime=runtime, device=device)
    finally:
        distributed.stop()


def check_distributable(model: str | Path | None, inputs: Sequence[str | Path]) -> None:
    """Refuse what cannot be split among processes: paths on stdin, a TensorFlow (Keras) model."""
    from imgclf.deploy.bundle import find_bundle, read_bundle_info

    if "-" in [str(entry) for entry in inputs]:
        raise ImgclfError("- (paths on stdin) cannot be split among processes, which do not share stdin; write the "
                          "paths to a file and give @list.txt")
    if model is None or not Path(model).is_dir():
        return  # a registry backbone (embed): a torch model
    bundle = find_bundle(model)
    info = read_bundle_info(bundle)
    backends = {info.backend} | {read_bundle_info(bundle / member["path"]).backend for member in info.members}
    if backends - {"torch"}:
        raise ImgclfError(f"{model}: a {'/'.join(sorted(backends - {'torch'}))} model runs in one process; "
                          "--nproc and torchrun are supported for models trained with --backend torch "
                          "(leave out --nproc)")


def _check_predict_options(top_k: int, min_confidence: float, batch_size: int) -> None:
    if not 0.0 <= min_confidence <= 1.0:
        raise ImgclfError(f"--min-confidence must be a probability between 0 and 1, got {min_confidence}")
    if top_k < 1:
        raise ImgclfError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")


def export(model: str | Path, format: str = "onnx", *, out: str | Path | None = None, quantize: str | None = None,
           data: str | Path | None = None, tolerance: float = 1e-4, max_accuracy_drop: float = 0.02) -> ExportResult:
    """Export a bundle with a parity check; ``quantize="int8"`` adds an int8 ONNX file.

    ``format``: ``onnx`` or ``torchscript`` for a PyTorch model; ``savedmodel``,
    ``tflite`` or ``onnx`` for a Keras (``backend="tensorflow"``) one.

    The files go into the bundle folder by default, where ``runtime="onnx"``
    (and ``auto``, when it measured faster) finds them.
    """
    from imgclf.deploy.export import export as run_export

    return run_export(model, format, out=out, quantize=quantize, data=data, tolerance=tolerance,
                      max_accuracy_drop=max_accuracy_drop)


def compare(data: str | Path, *, backends: str | list[str] = "torch,tensorflow", model: str = "tutorial-cnn",
            epochs: float = 10, out: str | Path | None = None, overwrite: bool = False,
            archive: str | Path | None = None, **options: object) -> Comparison:
    """Train ``model`` on each backend with the same recipe, seed and split; write ``OUT/comparison.html``.

    >>> imgclf.compare("photos/", epochs=10).html     # doctest: +SKIP
    """
    from imgclf.workflows.comparison import compare as run_comparison
    from imgclf.workflows.comparison import parse_backends

    names = parse_backends(backends if isinstance(backends, str) else ",".join(backends))
    return run_comparison(data, backends=names, model=model, epochs=epochs, out=out, overwrite=overwrite,
                          archive=archive, **options)


def report(run: str | Path, *, label_issues: bool = True) -> Path:
    """Re-evaluate a run on its held-out split and rewrite its ``report.html``; returns the report's path."""
    from imgclf.evaluation.run_report import report_run

    return report_run(run, label_issues=label_issues)[0]


def calibrate(model: str | Path, data: str | Path | None = None, *, split: str = "val",
              batch_size: int = 64) -> Calibration:
    """Fit the temperature of an (older) run's bundle on its validation split and store it in ``model.json``.

    Training does this itself at the end; ``data`` and ``split`` choose other
    held-out labelled images. Every runtime then applies it.
    """
    from imgclf.deploy.calibration import calibrate_run

    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    return calibrate_run(model, data, split=split, batch_size=batch_size)


def ensemble(runs: Sequence[str | Path], out: str | Path, *, weights: str = "fit", overwrite: bool = False,
             report: bool = True, batch_size: int = 64) -> EnsembleResult:
    """Soft-voting ensemble of trained runs in ``out``: one model for load, predict, evaluate, serve, export.

    ``weights="fit"`` minimises the validation NLL over the simplex; ``"equal"`` averages.
    Members may differ in architecture, input size and backend; their classes must match.
    """
    from imgclf.evaluation.run_report import report_run
    from imgclf.workflows.ensemble import build_ensemble

    result = build_ensemble(runs, out, weights=weights, overwrite=overwrite, batch_size=batch_size)
    if report:
        report_run(result.out)
    return result


def tune(data: str | Path, *, out: str | Path | None = None, trials: int | None = None,
         time_budget: str | None = None, storage: str | None = None, study_name: str | None = None,
         space: str | Path | None = None, startup_trials: int = 3, archive: str | Path | None = None,
         **options: object) -> TuneResult:
    """Hyperparameter search with Optuna (TPE, median pruning); every trial is a training run in ``out/trials``.

    >>> study = imgclf.tune("photos/", trials=20, model="fastnet")   # doctest: +SKIP
    >>> study.best["params"]                                         # doctest: +SKIP

    Stops when ``trials`` trials of the study finished or ``time_budget``
    (e.g. ``"10m"``) is spent; rerunning resumes the study stored in
    ``out/study.db`` (or ``storage``: an Optuna RDB URL or ``journal:PATH``).
    ``space`` is a YAML search space (default: ranges around the model's
    recipe); ``options`` are training options fixed for every trial.
    """
    from imgclf.workflows.tune import tune as run_tune

    return run_tune(data, out=out, trials=trials, time_budget=time_budget, storage=storage, study_name=study_name,
                    space_file=space, startup_trials=startup_trials, archive=archive, **options)


def explain(model: str | Path, image: str | Path | np.ndarray, *, top_k: int = 3) -> Explanation:
    """Grad-CAM heat maps of one image: ``.map`` is the top class's (H, W) array in [0, 1], ``.top`` the classes.

    >>> imgclf.explain("runs/shop", "cat.jpg").map.shape    # doctest: +SKIP
    (224, 224)
    """
    return load(model, tta=False).explain(image, top_k=top_k)


def explain_files(model: str | Path, images: str | Path | Sequence[str | Path], out: str | Path, *, top_k: int = 3
                  ) -> tuple[list[tuple[Path, Explanation]], list[tuple[str, str]]]:
    """Write ``OUT/<image name>.gradcam.png`` (the image and one overlay per top class) for each image.

    Returns the (file written, explanation) pairs and the (path, reason) of images that could not be read.
    """
    from imgclf.data.decode import decode_file
    from imgclf.deploy.explain import save_explanation
    from imgclf.deploy.predict import expand_inputs

    if top_k < 1:
        raise ImgclfError(f"--top-k must be at least 1, got {top_k}")
    classifier = load(model, tta=False)
    paths = expand_inputs([images] if isinstance(images, (str, Path)) else list(images))
    size = (classifier.info.image_size, classifier.info.image_size)
    written, skipped = [], []
    taken: set[str] = set()
    for path in paths:
        decoded = decode_file(Path(path), size, policy=classifier.info.resize,
                              grayscale=classifier.info.channels == 1)
        if decoded.pixels is None:  # an unreadable image is skipped and reported; the others go on
            skipped.append((str(path), decoded.error))
            continue
        explanation = classifier.explain(decoded.pixels, top_k=top_k)
        name = f"{Path(path).stem}.gradcam.png"
        if name in taken:  # two images of the same name in different folders
            name = f"{Path(path).stem}-{len(taken)}.gradcam.png"
        taken.add(name)
        written.append((save_explanation(explanation, Path(out) / name, title=Path(path).name), explanation))
    return written, skipped


# ----------------------------------------------------------------- embeddings
def embed(model: str | Path, inputs: str | Path | Sequence[str | Path], *, weights: str | Path | None = None,
          out: str | Path | None = None, image_size: int | None = None, batch_size: int = 64,
          device: str = "auto") -> FileEmbeddings | None:
    """Embeddings of images (files, folders, globs, @lists, or a CSV with an ``image`` column), cached per image.

    ``model`` is a registry backbone with pretrained weights (``imgclf models
    --pretrained``) or a trained model; ``out`` (``.npz``) also saves paths,
    vectors and errors for use outside imgclf. ``image_size`` applies to a
    backbone (default 224, as ``train`` uses it); a trained model keeps its own.

    Under torchrun each rank embeds its share of the inputs into parts
    (resumable) and rank 0 returns (and saves) them all in input order; the
    other ranks return None.
    """
    from imgclf import distributed
    from imgclf.embeddings.embed_parts import embed_in_parts
    from imgclf.embeddings.embedder import Embedder

    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    if out is not None and Path(out).suffix.lower() != ".npz":
        raise ImgclfError(f"--out {out}: embeddings are saved as .npz (arrays paths, vectors, errors); "
                          "give a file name ending in .npz")
    world = distributed.current_world()
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if world.is_distributed:
        check_distributable(None, entries)
    embedder = Embedder.load(model, weights=weights, device=distributed.rank_device(device, world),
                             image_size=image_size)
    embedder.batch_size = batch_size
    if world.is_distributed:
        distributed.start(embedder.device)
        try:
            embedded = embed_in_parts(embedder, _image_inputs(entries), Path(out) if out else None, world)
        finally:
            distributed.stop()
    else:
        embedded = embedder.embed_files(_image_inputs(entries))
    if out is not None and embedded is not None:
        _save_embeddings(embedded, Path(out))
    return embedded


def _image_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files, folders, globs and @lists as ``predict`` takes them; a lone ``.csv`` is read for its image column."""
    from imgclf.deploy.predict import expand_inputs
    from imgclf.embeddings.tables import IMAGE_COLUMN, read_items

    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if len(entries) == 1 and str(entries[0]).lower().endswith(".csv"):
        return [Path(item[IMAGE_COLUMN]) for item in read_items(entries[0])]
    return expand_inputs(entries)


def _save_embeddings(embedded: FileEmbeddings, path: Path) -> None:
    with atomic_path(path) as partial:
        np.savez(partial, paths=np.array([str(p) for p in embedded.paths]), vectors=embedded.vectors,
                 errors=np.array(embedded.errors))


def similar(model: str | Path, image_a: str | Path, image_b: str | Path, *, weights: str | Path | None = None,
            device: str = "auto") -> float:
    """Similarity of two images in [0, 1] (cosine of their embeddings); see ``imgclf.embeddings.similarity``."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.similarity import similarity

    embedded = Embedder.load(model, weights=weights, device=device).embed_files([Path(image_a), Path(image_b)],
                                                                               description="Embedding")
    for path, error in zip(embedded.paths, embedded.errors):
        if error:
            raise ImgclfError(f"{path}: {error}")
    return similarity(embedded.vectors[0], embedded.vectors[1])


def build_index(model: str | Path, source: str | Path, out: str | Path, *, weights: str | Path | None = None,
                device: str = "auto") -> tuple[SimilarityIndex, list[tuple[str, str]]]:
    """Embed every image of ``source`` (a folder, or a CSV with an ``image`` column) into a search index at ``out``.

    Returns the index and the (path, reason) of images that could not be read (also listed in ``out``).
    """
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.index import SimilarityIndex
    from imgclf.embeddings.tables import read_items

    items = read_items(source)
    index, skipped = SimilarityIndex.build(Embedder.load(model, weights=weights, device=device), items,
                                           str(weights) if weights else None)
    index.save(Path(out))
    if skipped:
        write_problem_list(Path(out) / "skipped_files.txt", skipped)
    return index, skipped


def query_index(index: str | Path, images: str | Path | Sequence[str | Path], *, k: int = 5, device: str = "auto"
                ) -> list[tuple[Path, list[Neighbour], str]]:
    """The ``k`` most similar indexed items of each image: (image, neighbours best first, error or "")."""
    from imgclf.embeddings.index import SimilarityIndex

    if k < 1:
        raise ImgclfError(f"-k must be at least 1, got {k}")
    loaded = SimilarityIndex.load(index)
    embedded = loaded.embedder(device=device).embed_files(_image_inputs(images), description="Embedding queries")
    found = loaded.search(embedded.vectors, k)
    return [(path, hits if not error else [], error)
            for path, hits, error in zip(embedded.paths, found, embedded.errors)]


def catalog_matcher(catalog: str | Path, *, model: str | Path = DEFAULT_EMBEDDING_MODEL,
                    weights: str | Path | None = None, scoring: str = "auto", image_weight: float | None = None,
                    k: int | None = None, min_confidence: float = 0.5, matcher: str | Path | None = None,
                    device: str = "auto") -> CatalogMatcher:
    """The catalogue embedded and its scoring ready (the learned matcher fitted once, then loaded from ``matcher``)."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.match import Catalog
    from imgclf.embeddings.suggest import CatalogMatcher, check_options

    check_options(scoring, image_weight, min_confidence)  # mistakes are reported before the model loads
    items = Catalog.read(catalog)
    embedder = Embedder.load(model, weights=weights, device=device)
    return CatalogMatcher.build(Catalog.load(catalog, embedder, items), embedder, scoring=scoring,
                                image_weight=image_weight, k=k, min_confidence=min_confidence,
                                matcher_dir=Path(matcher) if matcher else None)


def match(catalog: str | Path, *, image: str | Path | None = None, name: str | None = None,
          model: str | Path = DEFAULT_EMBEDDING_MODEL, weights: str | Path | None = None, scoring: str = "auto",
          image_weight: float | None = None, k: int | None = None, min_confidence: float = 0.5,
          matcher: str | Path | None = None, device: str = "auto") -> Suggestion:
    """Suggest a category for a new product from its photo and/or name, with the closest catalogue items."""
    from imgclf.embeddings.match import Queries
    from imgclf.embeddings.similarity import normalise

    if image is None and not name:
        raise ImgclfError("give --image, --name or both to match against the catalogue")
    found = catalog_matcher(catalog, model=model, weights=weights, scoring=scoring, image_weight=image_weight, k=k,
                            min_confidence=min_confidence, matcher=matcher, device=device)
    vector = np.zeros((1, found.reference.vectors.shape[1]), dtype=np.float32)
    if image is not None:
        embedded = found.embedder.embed_files([Path(image)], description="Embedding the photo")
        if embedded.errors[0]:
            raise ImgclfError(f"--image {image}: {embedded.errors[0]}")
        vector = normalise(embedded.vectors[:1])
    suggestion = found.suggest(Queries(vector, [name or ""]))[0]
    suggestion.skipped = found.catalog.skipped
    return suggestion


def match_batch(catalog: str | Path, queries: str | Path, out: str | Path, *, batch_size: int = 512,
                model: str | Path = DEFAULT_EMBEDDING_MODEL, weights: str | Path | None = None, scoring: str = "auto",
                image_weight: float | None = None, k: int | None = None, min_confidence: float = 0.5,
                matcher: str | Path | None = None, device: str = "auto") -> BatchSummary:
    """Suggestions for every new product of ``queries`` (a CSV with image and/or name) written to ``out``."""
    from imgclf.embeddings.match_batch import match_batch as run_batch

    found = catalog_matcher(catalog, model=model, weights=weights, scoring=scoring, image_weight=image_weight, k=k,
                            min_confidence=min_confidence, matcher=matcher, device=device)
    return run_batch(found, Path(queries), Path(out), batch_size)


def evaluate_match(catalog: str | Path, *, model: str | Path = DEFAULT_EMBEDDING_MODEL,
                   weights: str | Path | None = None, k: int | None = None, seed: int = 0,
                   device: str = "auto") -> MatchEvaluation:
    """Hold out whole products; accuracy of image-only, name-only, blend and learned matching on them."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.match import DEFAULT_TOP_K, Catalog
    from imgclf.embeddings.match_evaluation import evaluate as evaluate_catalog

    items = Catalog.read(catalog)
    loaded = Catalog.load(catalog, Embedder.load(model, weights=weights, device=device), items)
    return evaluate_catalog(loaded, DEFAULT_TOP_K if k is None else k, seed)
