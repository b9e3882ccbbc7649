"""Draw pictures (PNG, matplotlib) of images a person would rather look at than read about.

The sample grid and the augmentation preview live here because inspect, preview-augment and the run
report all draw them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclf.data.decode import DEFAULT_MAX_PIXELS, decode_file
from imgclf.data.inspect import sample_items
from imgclf.data.sources import ImageDataset, Item
from imgclf.errors import ImgclfError

SAMPLE_GRID_SIZE = 160  # pixels per tile in sample pictures
FINDINGS_PER_KIND = 4  # examples of each kind of finding in inspect's findings.png


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (kept by Python as surrogates) shown as U+FFFD: fonts cannot draw them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def save_image_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: Path, columns: int = 3,
                    title: str | None = None) -> Path:
    """Save ``images`` (H, W, C uint8 or float in 0..1) in a grid with one title each."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.8), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, text in zip(axes.flat, images, titles):
        shown = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        axis.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
        axis.set_title(printable(text), fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_samples(dataset: ImageDataset, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    size = (SAMPLE_GRID_SIZE, SAMPLE_GRID_SIZE)
    decoded = [(decode_file(item.path, size, policy="pad", max_pixels=max_pixels).pixels, " | ".join(item.labels))
               for item in sample_items(dataset)]
    shown = [(pixels, title) for pixels, title in decoded if pixels is not None]
    return save_image_grid([pixels for pixels, _ in shown], [title for _, title in shown], path,
                           title=f"{Path(dataset.source).name}: first images of each class")


def draw_findings(findings: Sequence[dict], path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                  per_kind: int = FINDINGS_PER_KIND) -> Path | None:
    """The first ``per_kind`` images of each kind of finding (inspect's quality issues, outliers), a row a kind.

    ``findings`` are report.json's entries (kind, path, labels, score), worst
    first within a kind. Nothing found: no picture, and an old one is removed.
    """
    path.unlink(missing_ok=True)
    by_kind: dict[str, list[dict]] = {}
    for entry in findings:
        by_kind.setdefault(entry["kind"], []).append(entry)
    if not by_kind:
        return None
    size = (SAMPLE_GRID_SIZE, SAMPLE_GRID_SIZE)
    blank = np.full((*size, 3), 255, dtype=np.uint8)
    images, titles = [], []
    for kind, entries in by_kind.items():
        for column in range(per_kind):
            entry = entries[column] if column < len(entries) else None
            decoded = decode_file(Path(entry["path"]), size, policy="pad", max_pixels=max_pixels) if entry else None
            images.append(decoded.pixels if decoded is not None and decoded.pixels is not None else blank)
            titles.append(f"{kind} {entry['score']:.3g}\n{' | '.join(entry['labels'])}: {Path(entry['path']).name[:18]}"
                          if entry else "")
    return save_image_grid(images, titles, path, columns=per_kind, title="inspect: the worst images of each kind")


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
    assert pixels is not None  # the probe above decoded this file
    batch = torch.from_numpy(np.repeat(pixels[None], 9, axis=0))
    augmented = augment_batch(batch, config, torch.Generator().manual_seed(seed))
    tiles = [tile.permute(1, 2, 0).clamp(0, 1).numpy() for tile in augmented]
    titles = ["original"] + [f"{augment} #{k}" for k in range(1, 9)]
    tiles[0] = pixels
    return save_image_grid(tiles, titles, out, title=f"{item.path.name} ({item.label}), augment={augment}")
