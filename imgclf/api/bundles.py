"""A trained model (a bundle or run): load, evaluate, report, calibrate, export, explain; and the model names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.files import write_text_atomic
from imgclf.runs import slug

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.deploy.calibration import Calibration
    from imgclf.deploy.classifier import Classifier
    from imgclf.deploy.explain import Explanation
    from imgclf.deploy.export import ExportResult
    from imgclf.evaluation.evaluate import Evaluation
    from imgclf.models import ModelInfo


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
             track: str | None = None, corrections: str | Path | None = None,
             rename: Sequence[str] = ()) -> Evaluation:
    """Metrics, pictures and (with ``label_issues``) likely label errors of ``model`` on labelled images.

    ``data`` is any source; by default the run's own test split (validation
    if it has none). Writes ``metrics.json`` and PNGs to ``out`` (default
    ``RUN/evaluation`` for a run's own split, else ``evaluation-<data name>``).
    ``folds`` finds label issues from K-fold cross-validated predictions
    (K models retrained with the bundle's recipe) instead. ``track="mlflow"``
    logs the figures and pictures as an MLflow run (see :mod:`imgclf.workflows.tracking`). ``corrections`` (a
    corrections CSV) and ``rename`` (``OLD=NEW`` class renames) apply to the images first, as in training; what they
    did is kept in ``corrections.json`` in ``out``.
    """
    from imgclf.deploy.bundle import find_bundle
    from imgclf.deploy.classifier import Classifier
    from imgclf.evaluation.evaluate import choose_split, evaluation_dataset
    from imgclf.evaluation.evaluate import evaluate as run_evaluation
    from imgclf.workflows.cross_validation import CrossValidation
    from imgclf.workflows.tracking import check_tracker, tracked_run

    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
    check_tracker(track)
    dataset = evaluation_dataset(model, data, corrections, rename)
    items, chosen = choose_split(dataset, split)
    classifier = Classifier.load(model, device=device, tta=tta, runtime=runtime, batch_size=batch_size,
                                 allow_int8=False)  # the model's own answers: auto leaves int8 out
    if out is None:
        out = find_bundle(model).parent / "evaluation" if data is None else Path(f"evaluation-{slug(str(data), 'data')}")
    with tracked_run(track, f"evaluate {Path(model).name}", tags={"command": "evaluate"}) as tracker:
        tracker.log_params({"model": str(model), "data": str(data) if data is not None else "its run's split",
                            "split": chosen, "runtime": runtime, "tta": classifier.tta,
                            **({"corrections": dataset.corrections["digest"]} if dataset.corrections else {})})
        evaluation = run_evaluation(classifier, items, chosen, Path(out), label_issues=label_issues,
                                    out_of_fold=CrossValidation(folds) if folds else None, batch_size=batch_size)
        if dataset.corrections:
            write_text_atomic(Path(out) / "corrections.json", json.dumps(dataset.corrections, indent=2))
        tracker.log_metrics({name: value for name, value in evaluation.metrics.items() if name != "confusion_matrix"})
        tracker.log_artifacts([Path(out)])
    return evaluation


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
