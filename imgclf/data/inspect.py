"""What is in a dataset and what is wrong with it, before any training.

Counts per class and split, image sizes and modes, broken files, exact
duplicates inside a split (they over-weight some images) and across splits
(leakage: the model is tested on images it trained on), the same image under
two labels, class imbalance and, for path labels (``animals/dog``), the
category tree with counts and the same name under two parents. For
multi-label data also how many labels an image carries and which labels
come together (co-occurrence). Image quality (blurry, dark, bright, low
information, near-constant, grayscale among colour, odd size or aspect:
:mod:`imgclf.data.quality`) comes from the same decode, every flagged image
listed in the report with its score.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data.cache import ImageCache
from imgclf.data.hierarchy import label_tree, node_counts, same_leaf_warnings
from imgclf.data.quality import CHECKS, find_quality_issues
from imgclf.data.sources import UNSPLIT, ImageDataset, Item, label_histogram

# A class with under a fifth of the largest class's images is flagged:
# below that, an unweighted loss mostly ignores it.
IMBALANCE_RATIO = 0.2
TOP_PAIRS = 10  # label pairs listed by inspect for multi-label data
EXAMPLES_NAMED = 3  # files a warning names before pointing at report.json
MEANINGS = {**{check.kind: check.help for check in CHECKS}, "outlier": "far from the rest of their class"}


@dataclass
class DuplicateGroup:
    """Files with identical bytes."""

    paths: list[Path]
    splits: list[str]
    labels: list[str]

    @property
    def kind(self) -> str:
        """``leakage`` across splits, ``label-conflict`` under different labels, else ``within-split``."""
        if len(set(self.splits)) > 1:
            return "leakage"
        if len(set(self.labels)) > 1:
            return "label-conflict"
        return "within-split"


@dataclass
class InspectReport:
    """Everything ``imgclf inspect`` found, ready to print or dump as JSON."""

    source: str
    classes: list[str]
    splits: list[str]
    counts: dict[str, dict[str, int]]
    multilabel: bool
    sizes: dict[str, dict[str, float]]
    modes: dict[str, int]
    broken: list[tuple[Path, str]]
    duplicates: list[DuplicateGroup]
    ignored: list[Path]
    warnings: list[str] = field(default_factory=list)
    near_duplicates: list[dict] | None = None  # pairs from --near-duplicates, as JSON; None when not searched
    tree: dict[str, int] = field(default_factory=dict)  # path labels: images under every category path
    label_sets: dict | None = None  # multi-label data: labels per image and co-occurrence (label_cooccurrence)
    images: dict[str, int] = field(default_factory=dict)  # readable images per split
    corrections: dict | None = None  # what --corrections/--rename did (ImageDataset.corrections); None: none given
    quality: dict | None = None  # the checks, every flagged image and notes (quality_findings); None: not measured
    outliers: dict | None = None  # far from their class in embedding space (--outliers); None: not searched

    @property
    def split_totals(self) -> dict[str, int]:
        """Images per split (with multi-label data fewer than the sum of the label counts)."""
        return {split: self.images.get(split, 0) for split in self.splits}

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "classes": self.classes,
            "multilabel": self.multilabel,
            "splits": self.split_totals,
            "counts": self.counts,
            "image_sizes": self.sizes,
            "modes": self.modes,
            "broken": [{"path": str(path), "reason": reason} for path, reason in self.broken],
            "duplicates": [{"kind": group.kind, "paths": [str(p) for p in group.paths], "splits": group.splits,
                            "labels": group.labels} for group in self.duplicates],
            "ignored_files": len(self.ignored),
            **({"near_duplicates": self.near_duplicates} if self.near_duplicates is not None else {}),
            **({"tree": self.tree} if self.tree else {}),
            **({"label_sets": self.label_sets} if self.label_sets is not None else {}),
            **({"corrections": self.corrections} if self.corrections is not None else {}),
            **({"quality": self.quality} if self.quality is not None else {}),
            **({"outliers": self.outliers} if self.outliers is not None else {}),
            "warnings": self.warnings,
        }


def inspect_dataset(dataset: ImageDataset, cache: ImageCache) -> InspectReport:
    """Summarise ``dataset`` from a facts-only cache of its files (same order as its items)."""
    ok = cache.ok
    good_items = [item for item, keep in zip(dataset.items, ok) if keep]
    counts = dataset.with_items(good_items).class_counts()
    report = InspectReport(
        source=dataset.source,
        classes=dataset.classes,
        splits=dataset.splits + ([UNSPLIT] if any(item.split is None for item in dataset.items) else []),
        counts=counts,
        multilabel=dataset.multilabel,
        sizes=_size_stats(cache.widths[ok], cache.heights[ok]),
        modes=dict(Counter(cache.modes[ok].tolist()).most_common()),
        broken=cache.broken(),
        duplicates=_duplicates(dataset.items, cache.digests, ok),
        ignored=dataset.ignored,
        label_sets=label_cooccurrence(good_items, dataset.classes) if dataset.multilabel else None,
        images=dict(Counter(item.split or UNSPLIT for item in good_items)),
    )
    hierarchical = not dataset.multilabel and label_tree(dataset.classes, dataset.source) is not None
    if hierarchical:
        report.tree = node_counts(label_histogram(good_items))
    report.warnings = _warnings(report, good_items) + (same_leaf_warnings(dataset.classes) if hierarchical else [])
    if cache.quality is not None:
        report.quality = quality_findings(dataset.items, cache.quality, cache.widths, cache.heights)
        report.warnings += finding_warnings(report.quality["issues"], report.source)
    return report


def quality_findings(items: list[Item], quality: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> dict:
    """The quality checks as JSON: each check's score, threshold and count, every flagged image, and notes."""
    issues, notes = find_quality_issues(quality, widths, heights)
    counts = Counter(issue.kind for issue in issues)
    checks = [{"kind": check.kind, "score": check.score, "threshold": check.threshold,
               "flagged_when": "below" if check.below else "above", "means": check.help, "images": counts[check.kind]}
              for check in CHECKS]
    return {"checks": checks, "notes": notes,
            "issues": [finding(items[issue.index], issue.kind, issue.score) for issue in issues]}


def finding(item: Item, kind: str, score: float, **extra: object) -> dict:
    """One flagged image as report.json lists it (the review page reads these): kind, file, split, labels, score."""
    return {"kind": kind, "path": str(item.path), "split": item.split or UNSPLIT, "labels": list(item.labels),
            "score": round(float(score), 4), **extra}


def finding_warnings(issues: list[dict], source: str) -> list[str]:
    """One warning a kind: how many images, what the check means, the first few files."""
    root = Path(source)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for issue in issues:
        by_kind[issue["kind"]].append(issue)
    warnings = []
    for kind, found in by_kind.items():
        meaning = f" ({MEANINGS[kind]})" if kind in MEANINGS else ""
        names = [str(Path(entry["path"]).relative_to(root)) if Path(entry["path"]).is_relative_to(root)
                 else entry["path"] for entry in found[:EXAMPLES_NAMED]]
        rest = f"all {len(found)} in" if len(found) > EXAMPLES_NAMED else "also in"
        warnings.append(f"{len(found)} image(s) {kind}{meaning}: e.g. {', '.join(names)} ({rest} report.json, "
                        f"findings.png)")
    return warnings


def label_cooccurrence(items: list[Item], classes: list[str]) -> dict:
    """Multi-label data: images per number of labels, the label pairs most often together, the full matrix.

    ``matrix[i][j]``: images carrying both ``classes[i]`` and ``classes[j]``
    (the diagonal: images carrying ``classes[i]``).
    """
    index = {name: position for position, name in enumerate(classes)}
    truth = np.zeros((len(items), len(classes)), dtype=np.int64)
    for row, item in enumerate(items):
        truth[row, [index[label] for label in item.labels]] = 1
    matrix = truth.T @ truth
    pairs = sorted(((int(matrix[i, j]), classes[i], classes[j]) for i in range(len(classes))
                    for j in range(i + 1, len(classes)) if matrix[i, j]), key=lambda pair: (-pair[0], pair[1], pair[2]))
    return {"labels_per_image": {str(count): int(images) for count, images in
                                 sorted(Counter(truth.sum(axis=1).tolist()).items())},
            "top_pairs": [{"labels": [first, second], "images": images} for images, first, second in pairs[:TOP_PAIRS]],
            "matrix": matrix.tolist()}


def _size_stats(widths: np.ndarray, heights: np.ndarray) -> dict[str, dict[str, float]]:
    if not len(widths):
        return {}
    return {name: {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
            for name, values in (("width", widths), ("height", heights))}


def _duplicates(items: list[Item], digests: np.ndarray, ok: np.ndarray) -> list[DuplicateGroup]:
    by_digest: dict[str, list[int]] = defaultdict(list)
    for index in np.flatnonzero(ok):
        by_digest[str(digests[index])].append(int(index))
    groups = []
    for members in by_digest.values():
        if len(members) > 1:
            chosen = [items[i] for i in members]
            groups.append(DuplicateGroup(paths=[item.path for item in chosen],
                                         splits=[item.split or "" for item in chosen],
                                         labels=["|".join(item.labels) for item in chosen]))
    order = {"leakage": 0, "label-conflict": 1, "within-split": 2}
    return sorted(groups, key=lambda group: (order[group.kind], str(group.paths[0])))


def _warnings(report: InspectReport, items: list[Item]) -> list[str]:
    warnings = []
    if report.broken:
        warnings.append(f"{len(report.broken)} file(s) cannot be decoded and will be skipped")
    kinds = Counter(group.kind for group in report.duplicates)
    if kinds["leakage"]:
        warnings.append(f"{kinds['leakage']} image(s) appear in more than one split (leakage): test scores will be "
                        f"too high; {_examples(report, 'leakage')}")
    if kinds["label-conflict"]:
        warnings.append(f"{kinds['label-conflict']} image(s) appear under different labels; "
                        f"{_examples(report, 'label-conflict')}")
    if kinds["within-split"]:
        warnings.append(f"{kinds['within-split']} group(s) of exact duplicates inside a split")
    training = [item for item in items if item.split in (None, "train")]
    imbalance = imbalance_warning(training)
    if imbalance:
        warnings.append(imbalance)
    histogram = label_histogram(training)
    missing = [name for name in report.classes if not histogram.get(name)]
    if missing:
        warnings.append(f"{len(missing)} class(es) have no training images: {', '.join(missing[:5])}")
    return warnings


def _examples(report: InspectReport, kind: str, shown: int = 3) -> str:
    """The first few duplicate groups of ``kind`` as path pairs, so the user can find them, then where the rest are."""
    groups = [group for group in report.duplicates if group.kind == kind]
    root = Path(report.source)

    def name(path: Path, label: str, split: str) -> str:
        where = path.relative_to(root) if path.is_relative_to(root) else path
        return f"{where} ({split if kind == 'leakage' else label})"

    pairs = [" = ".join(name(*member) for member in zip(group.paths, group.labels, group.splits))
             for group in groups[:shown]]
    rest = f"all {len(groups)} in" if len(groups) > shown else "also in"
    return f"e.g. {'; '.join(pairs)} ({rest} report.json, duplicates)"


def near_duplicate_warnings(pairs: list[dict]) -> list[str]:
    """Warnings for near-duplicate pairs (as ``NearDuplicatePair.to_json`` gives them), like those for exact ones."""
    kinds = Counter(pair["kind"] for pair in pairs)
    texts = {"leakage": "near-duplicate pair(s) across splits (leakage): test scores will be too high",
             "label-conflict": "near-duplicate pair(s) under different labels",
             "within-split": "near-duplicate pair(s) inside a split"}
    return [f"{kinds[kind]} {text}" for kind, text in texts.items() if kinds[kind]]


def imbalance_warning(training_items: list[Item]) -> str | None:
    """The warning when the rarest class has under ``IMBALANCE_RATIO`` of the commonest class's images."""
    histogram = label_histogram(training_items)
    if len(histogram) < 2:
        return None
    (large, most), (small, least) = histogram.most_common()[0], histogram.most_common()[-1]
    if least >= IMBALANCE_RATIO * most:
        return None
    return (f"class imbalance: '{small}' has {least} training images, '{large}' has {most}; "
            "consider --class-weights auto or --balanced-sampling when training")


def sample_items(dataset: ImageDataset, count: int = 9) -> list[Item]:
    """The first image of each class, then the second of each, ... up to ``count``: labels vary."""
    by_class: dict[str, list[Item]] = defaultdict(list)
    for item in dataset.items:
        by_class[item.label].append(item)
    chosen: list[Item] = []
    depth = 0
    while len(chosen) < count and any(len(members) > depth for members in by_class.values()):
        chosen += [members[depth] for _, members in sorted(by_class.items()) if len(members) > depth]
        depth += 1
    return chosen[:count]
