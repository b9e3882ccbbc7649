"""Predict many images: expand the inputs, decode in parallel, classify in batches, stream the rows.

The naive loop (open one image, transform it, call the model on a batch of
one) leaves the model idle while Pillow decodes and pays the per-call cost
of the framework for every image. Here worker processes decode batches of
files while the main process runs the model on the previous batch, in
order, so output rows can be written as they come; an unreadable file
becomes an error row and the stream goes on.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data.decode import ResizePolicy, decode_file
from imgclf.data.hierarchy import Hierarchy, LevelSuggestion
from imgclf.data.sources import IMAGE_EXTENSIONS, MULTILABEL_SEPARATOR
from imgclf.data.workers import run_in_workers
from imgclf.errors import ImgclfError

UNKNOWN = "unknown"
GLOB_CHARACTERS = set("*?[")


@dataclass
class PredictionRow:
    """One input's answer: the top classes with probabilities, or why it could not be read."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # over every class, in the model's class order
    error: str = ""
    min_confidence: float = 0.0
    # a hierarchical model's path from the top down, a probability per level (the sum of its leaves')
    levels: list[LevelSuggestion] = field(default_factory=list)
    labels: list[str] | None = None  # a multi-label model's answer: every label at or above its threshold
    features: np.ndarray | None = None  # the pooled features of the forward pass (predict_files(features=True))

    @property
    def prediction(self) -> str:
        """The top class, or for a hierarchical model the deepest level of its path at least ``min_confidence`` sure."""
        if self.error or not self.top:
            return ""
        if self.labels is not None:  # written as a manifest's labels cell: "cat|dog" ("" when none is said)
            return MULTILABEL_SEPARATOR.join(self.labels)
        if self.levels:
            answer = Hierarchy.back_off(self.levels, self.min_confidence)
            return answer.label if answer else UNKNOWN
        label, probability = self.top[0]
        return label if probability >= self.min_confidence else UNKNOWN

    @property
    def confidence(self) -> float | None:
        """The predicted label's probability (the top level's when even that is unsure; None for a multi-label
        answer, which has one probability per label)."""
        if self.labels is not None:
            return None
        if self.levels:
            answer = Hierarchy.back_off(self.levels, self.min_confidence)
            return (answer or self.levels[0]).probability
        return self.top[0][1] if self.top else None


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (recursively, image extensions only), globs, ``@list.txt`` files and ``-`` (stdin).

    Strings are interpreted; ``Path`` objects are taken literally (a folder
    still recurses), so an already expanded list can be passed again safely.
    """
    paths: list[Path] = []
    for entry in inputs:
        if isinstance(entry, Path):
            paths += _folder_images(entry) if entry.is_dir() else [entry]
        elif entry == "-":
            paths += [Path(line.strip()) for line in sys.stdin if line.strip()]
        elif entry.startswith("@"):
            listing = Path(entry[1:])
            try:
                lines = listing.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise ImgclfError(f"{entry}: cannot read the list file ({error}); give one image path per line") from None
            paths += [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
        elif Path(entry).is_dir():
            paths += _folder_images(Path(entry))
        elif GLOB_CHARACTERS & set(entry) and not Path(entry).exists():
            matches = sorted(Path(match) for match in glob.glob(entry, recursive=True) if not Path(match).is_dir())
            if not matches:
                raise ImgclfError(f"{entry}: the pattern matches no files")
            paths += matches
        else:
            paths.append(Path(entry))  # a missing file becomes an error row, not an abort
    if not paths:
        raise ImgclfError("no images to predict; give files, folders, globs, @list.txt or - for stdin")
    return paths


def _folder_images(folder: Path) -> list[Path]:
    # not is_dir() rather than is_file(): a dangling link or a symlink loop is listed, so the decoder reports it
    found = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir())
    if not found:
        raise ImgclfError(f"{folder}: no images found in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


@dataclass(frozen=True)
class _DecodeBatch:
    """Picklable job for worker processes: decode a batch of files at the model's input size."""

    size: tuple[int, int]
    policy: ResizePolicy
    grayscale: bool

    def __call__(self, paths: list[str]) -> tuple[np.ndarray, list[str]]:
        channels = 1 if self.grayscale else 3
        pixels = np.zeros((len(paths), *self.size, channels), dtype=np.uint8)
        errors = []
        for index, path in enumerate(paths):
            decoded = decode_file(Path(path), self.size, self.policy, self.grayscale)
            if decoded.pixels is not None:
                pixels[index] = decoded.pixels
            errors.append(decoded.error)
        return pixels, errors


def decoded_batches(paths: list[Path], size: tuple[int, int], policy: ResizePolicy, grayscale: bool,
                    batch_size: int, workers: int | None = None) -> Iterator[tuple[list[Path], np.ndarray, list[str]]]:
    """(paths, uint8 pixels, error per path) in input order, decoded ahead by worker processes."""
    job = _DecodeBatch(size, policy, grayscale)
    chunks = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, len(chunks))
    decoded = run_in_workers(job, [[str(path) for path in chunk] for chunk in chunks], workers)
    for chunk, (pixels, errors) in zip(chunks, decoded, strict=True):
        yield chunk, pixels, errors
