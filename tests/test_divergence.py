"""Plain images and diverged runs: safe whitening, a one-line stop at the first non-finite loss, no bundle from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FASTNET, run_cli
from PIL import Image
from torch import nn

import imgclf
from imgclf.engines.callbacks import FitState
from imgclf.engines.divergence import Diverged, DivergenceGuard, check_finite_weights
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


@pytest.mark.slow
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


def test_the_guard_names_the_epoch_and_step_of_the_first_non_finite_loss() -> None:
    fit = FitState(config=None, stages=[], history=[], epoch=3, step=7, loss=float("nan"))  # type: ignore[arg-type]
    with pytest.raises(Diverged) as raised:
        DivergenceGuard().on_step_end(fit)
    message = str(raised.value)
    assert "epoch 3, step 7" in message and "nan" in message and "--lr" in message and "\n" not in message
    fit.loss = 0.5
    DivergenceGuard().on_step_end(fit)  # a finite loss goes on


def test_the_guard_stops_at_an_epoch_whose_val_loss_is_not_finite() -> None:
    fit = FitState(config=None, stages=[], history=[], epoch=2, row={"train_loss": 0.7, "val_loss": float("inf")})  # type: ignore[arg-type]
    with pytest.raises(Diverged, match="end of epoch 2: the val loss is inf"):
        DivergenceGuard().on_epoch_end(fit)


def test_weights_that_are_not_finite_are_refused() -> None:
    model = nn.Linear(2, 2)
    check_finite_weights(model)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match="weights to ship"):
        check_finite_weights(model)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("tensorflow", marks=[pytest.mark.tensorflow, pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="the TensorFlow extra is not installed")])])
def test_a_run_that_diverges_stops_with_one_line_and_writes_no_bundle(backend: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name, colour in {"red": (220, 30, 30), "blue": (30, 40, 220)}.items():
        (data / name).mkdir(parents=True)
        for number in range(12):
            Image.new("RGB", (16, 16), colour).save(data / name / f"{number}.png")
    run = tmp_path / "run"
    model = (["--model", "fastnet", "--model-arg", "widths=[8,8]", "--model-arg", "depth=1", "--precision", "fp32"]
             if backend == "torch" else ["--backend", "tensorflow", "--image-size", "16", "--batch-size", "8"])
    done = run_cli("train", str(data), *model, "--epochs", "2", "--lr", "1e30", "--workers", "1", "--out", str(run))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "error: training diverged at epoch 1, step" in errors[0], done.stdout + done.stderr
    assert not (run / "model" / "model.json").exists()
