"""Plain images and diverged runs: safe whitening, a one-line stop at the first non-finite loss, no bundle from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FASTNET
from PIL import Image
from torch import nn

import imgclf
from imgclf.models.folding import inference_copy
from imgclf.models.small import FastNet


def _degenerate_sets() -> dict[str, np.ndarray]:
    """(N, 3, 16, 16) float images in [0, 1]: all black, all white, one colour per class (jittered), pure noise."""
    rng = np.random.default_rng(0)
    colours = np.array([(220, 30, 30), (240, 150, 20), (30, 40, 220), (30, 220, 220)], dtype=np.float64)
    jittered = np.clip(np.repeat(colours, 10, axis=0) + rng.integers(-25, 26, (40, 3)), 0, 255) / 255
    return {"black": np.zeros((40, 3, 16, 16)), "white": np.ones((40, 3, 16, 16)),
            "one colour per class": np.broadcast_to(jittered[:, :, None, None], (40, 3, 16, 16)).copy(),
            "noise": rng.random((40, 3, 16, 16))}


@pytest.mark.parametrize("name", list(_degenerate_sets()))
def test_whitening_gives_no_filter_to_directions_the_patches_do_not_span(name: str) -> None:
    # Plain images span about 3 of the 12 directions of a 2x2 patch; the others hold only rounding noise,
    # which whitening used to scale up to std ~1e-5, for BatchNorm (eps 1e-12) to scale up again to 1.
    images = torch.from_numpy(_degenerate_sets()[name]).float()
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)[:, None, None]
    normalised = (images - images.mean(dim=(0, 2, 3))[:, None, None]) / std
    net = FastNet(4, widths=(8,), depth=1)
    net.init_whitening(normalised)
    assert torch.isfinite(net.whiten.weight).all()
    with torch.no_grad():
        spread = net.whiten(normalised).std(dim=(0, 2, 3))
    assert ((spread > 0.5) | (spread < 1e-9)).all(), f"{name}: channels of pure noise: {spread}"


def test_fastnet_trains_on_plain_colour_images(tmp_path: Path) -> None:
    # The recipe at 16 px: one jittered solid colour per image, four classes (used to end in NaN).
    rng = np.random.default_rng(1)
    for name, colour in {"red": (220, 30, 30), "orange": (240, 150, 20), "blue": (30, 40, 220),
                         "cyan": (30, 220, 220)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for number in range(16):
            jittered = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255))
            Image.new("RGB", (16, 16), jittered).save(tmp_path / "data" / name / f"{number}.png")
    result = imgclf.train(tmp_path / "data", out=tmp_path / "run", epochs=3, **TINY_FASTNET)
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert result.metrics["val_accuracy"] > 0.5


def test_a_model_with_non_finite_outputs_is_copied_for_inference_without_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    copied = inference_copy(model, torch.zeros(2, 3, 8, 8))
    assert not torch.isfinite(copied(torch.zeros(1, 3, 8, 8))).any()
