"""Draw pictures (PNG, matplotlib) of images a person would rather look at than read about."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
        axis.set_title(text, fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
