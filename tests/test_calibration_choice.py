"""Temperature scaling says what it optimised (val log loss) and what it did, and keeps T = 1 when it cannot tell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_COLOURS, make_class_folder, run_cli
from scipy.special import softmax

from imgclf.deploy.calibration import MIN_CALIBRATION_IMAGES, calibrate_logits


def test_too_few_validation_images_keep_the_temperature_at_one_and_say_why() -> None:
    rng = np.random.default_rng(0)
    logits = 5 * rng.normal(size=(MIN_CALIBRATION_IMAGES - 1, 3))
    calibration = calibrate_logits(logits, rng.integers(0, 3, len(logits)))
    assert calibration.temperature == 1.0 and calibration.nll_after == calibration.nll_before
    assert "too few" in calibration.kept_one and "\n" not in calibration.kept_one


def test_a_fit_that_barely_lowers_the_log_loss_keeps_the_temperature_at_one() -> None:
    # labels drawn from softmax(logits): T = 1 is right, and what the fit finds on 200 images is noise
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (200, 4))
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])
    calibration = calibrate_logits(logits, labels)
    assert calibration.temperature == 1.0 and "lowers val log loss by only" in calibration.kept_one


def test_a_clear_gain_keeps_the_fitted_temperature() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    logits = rng.normal(0, 1, (400, 5))
    logits[np.arange(400), np.where(rng.random(400) < 0.7, labels, (labels + 1) % 5)] += 6.0  # over-confident
    calibration = calibrate_logits(logits, labels)
    assert calibration.temperature > 1.5 and calibration.kept_one == ""
    assert calibration.nll_after < calibration.nll_before


@pytest.mark.slow
def test_the_training_summary_shows_log_loss_and_ece_before_and_after(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=20)
    names = sorted(CLASS_COLOURS)
    for index, name in enumerate(names):  # label noise, so val has mistakes and over-confidence to fit
        for path in sorted((data / name).glob("*.png"))[::4]:
            path.rename(data / names[(index + 1) % len(names)] / f"noisy-{path.name}")
    args = ["--model", "fastnet", "--model-arg", "widths=[8,16,16]", "--model-arg", "depth=1", "--epochs", "6",
            "--batch-size", "16", "--lr", "0.5", "--precision", "fp32", "--workers", "1", "--val-fraction", "0.4"]
    result = run_cli("train", str(data), *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    shown = result.stdout + result.stderr
    assert "val ECE (temperature)" not in shown
    assert ("fitted on val log loss" in shown and "val log loss (before -> after T)" in shown
            and "val ECE (before -> after T)" in shown) or "T = 1 kept" in shown, shown
