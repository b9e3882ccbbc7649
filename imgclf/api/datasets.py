"""A dataset before training: ``inspect`` checks and summarises it, ``preview_augment`` draws an augmentation preset."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.api.embedding import DEFAULT_EMBEDDING_MODEL
from imgclf.data.cache import ImageCache, build_cache
from imgclf.data.corrections import correct_dataset
from imgclf.data.decode import DEFAULT_MAX_PIXELS
from imgclf.data.inspect import InspectReport, finding, finding_warnings, inspect_dataset, near_duplicate_warnings
from imgclf.data.sources import ImageDataset, Item, load_source
from imgclf.data.splits import load_dataset
from imgclf.errors import ImgclfError
from imgclf.files import write_problem_list
from imgclf.pictures import draw_augmentations, draw_findings, save_samples
from imgclf.runs import slug

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.embeddings.near_duplicates import NearDuplicatePair


@dataclass
class InspectResult:
    """The report plus the files ``inspect`` wrote."""

    report: InspectReport
    out: Path
    samples: Path | None
    broken_list: Path | None
    near_duplicates_picture: Path | None = None
    findings_picture: Path | None = None  # findings.png: the worst examples of each quality kind and the outliers


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
    outliers: bool = False,
    corrections: str | Path | None = None,
    rename: Sequence[str] = (),
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
    (leakage) and within them, drawn in ``near_duplicates.png``. Every image's
    quality is checked (blurry, dark, bright, low information, near-constant,
    grayscale among colour photos, odd size or aspect); ``outliers`` also finds
    images far from the rest of their class in ``embedding_model``'s
    embeddings (when its pretrained weights are here; the report says when
    not). The worst examples of each kind are drawn in ``findings.png``.

    ``corrections`` (a corrections CSV) and ``rename`` (``OLD=NEW``) apply
    first, so the report shows the data as training would see it.
    """
    dataset = correct_dataset(load_source(source, Path(archive) if archive else None), corrections, rename)
    cache = build_cache([item.path for item in dataset.items], size=None, max_pixels=max_pixels,
                        workers=workers, source=dataset.source, description="Checking images")
    report = inspect_dataset(dataset, cache)
    report.corrections = dataset.corrections
    out_dir = Path(out) if out else Path(f"inspect-{slug(dataset.source, 'dataset')}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ImgclfError(f"--out {out_dir} is a file; give a folder for the inspect report")
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = _embedding_checks(report, dataset, cache, out_dir / "near_duplicates.png", embedding_model,
                                near_duplicates, similarity_threshold, outliers)
    findings = draw_findings([*(report.quality or {}).get("issues", []), *(report.outliers or {}).get("issues", [])],
                             out_dir / "findings.png", max_pixels)
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    broken_file = out_dir / "broken_files.txt"
    broken_file.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
    if report.broken:
        write_problem_list(broken_file, [(str(path), reason) for path, reason in report.broken])
    broken_list = broken_file if report.broken else None
    good = dataset.with_items([item for item, ok in zip(dataset.items, cache.ok) if ok])
    samples = save_samples(good, out_dir / "samples.png", max_pixels) if good.items else None
    return InspectResult(report=report, out=out_dir, samples=samples, broken_list=broken_list,
                         near_duplicates_picture=picture, findings_picture=findings)


def _embedding_checks(report: InspectReport, dataset: ImageDataset, cache: ImageCache, picture: Path,
                      model: str | Path, near_duplicates: bool, threshold: float | None, outliers: bool) -> Path | None:
    """Near-duplicates and outliers into ``report``, from one embedding pass; the near-duplicates picture, if drawn."""
    picture.unlink(missing_ok=True)
    if not (near_duplicates or outliers):
        return None
    embedded = _embedded(dataset, cache, model, required=near_duplicates)
    if near_duplicates and isinstance(embedded, _Embedded):
        pairs = _near_duplicates(embedded, threshold)
        report.near_duplicates = [pair.to_json() for pair in pairs]
        report.warnings += near_duplicate_warnings(report.near_duplicates)
        if pairs:
            from imgclf.embeddings.near_duplicates import draw_pairs

            draw_pairs(pairs, picture)
    if outliers:
        report.outliers = _outliers(embedded, str(model), dataset.multilabel)
        report.warnings += finding_warnings(report.outliers.get("issues", []), report.source)
        report.warnings += [report.outliers["note"]] if "note" in report.outliers else []
    return picture if picture.exists() else None


@dataclass
class _Embedded:
    """The readable images of a dataset with their embeddings and content digests."""

    items: list[Item]
    vectors: np.ndarray
    digests: list[str]


def _embedded(dataset: ImageDataset, cache: ImageCache, model: str | Path, required: bool) -> _Embedded | str:
    """Every readable image embedded by ``model`` (from the embedding store where it has them).

    When ``model`` cannot be loaded (no pretrained weights here) and nothing
    ``required`` it (only outliers asked), the reason comes back instead.
    """
    from imgclf.embeddings.embedder import Embedder

    try:
        embedder = Embedder.load(model)
    except ImgclfError as error:
        if required:
            raise
        return str(error)
    readable = np.flatnonzero(cache.ok)
    items = [dataset.items[index] for index in readable]
    embedded = embedder.embed_files([item.path for item in items], description="Embedding images")
    keep = np.flatnonzero(embedded.ok)
    return _Embedded([items[i] for i in keep], embedded.vectors[keep], [str(cache.digests[readable[i]]) for i in keep])


def _near_duplicates(embedded: _Embedded, threshold: float | None) -> list[NearDuplicatePair]:
    from imgclf.embeddings.near_duplicates import find_near_duplicates
    from imgclf.embeddings.similarity import NEAR_DUPLICATE

    threshold = NEAR_DUPLICATE if threshold is None else threshold
    if not 0.0 < threshold <= 1.0:
        raise ImgclfError(f"--similarity-threshold {threshold:g} must be in (0, 1]; near-duplicates score about "
                          f"{NEAR_DUPLICATE:g} or more")
    return find_near_duplicates(embedded.items, embedded.vectors, embedded.digests, threshold)


def _outliers(embedded: _Embedded | str | None, model: str, multilabel: bool) -> dict:
    """report.json's ``outliers``: the images far from their class, or a note saying why none were searched."""
    from imgclf.embeddings.outliers import NEIGHBOURS, OUTLIER_ABOVE, find_outliers

    described = {"model": model, "neighbours": NEIGHBOURS, "threshold": OUTLIER_ABOVE,
                 "score": "distance to the class's mean / the class's median, times 1 + the share of the "
                          "nearest images with another label"}
    if multilabel:
        return {**described, "note": "outliers: not searched; they are found per class, for single-label data"}
    if not isinstance(embedded, _Embedded):
        return {**described, "note": f"outliers: not searched, {model} cannot embed here ({embedded}); give "
                                     "--embedding-model a backbone with pretrained weights (imgclf models --pretrained)"}
    found = find_outliers([item.label for item in embedded.items], embedded.vectors)
    return {**described, "issues": [finding(embedded.items[outlier.index], "outlier", outlier.score,
                                            nearest_class=outlier.nearest_class) for outlier in found]}


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
