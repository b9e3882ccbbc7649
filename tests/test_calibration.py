"""Temperature scaling: fitted on validation logits, stored in the bundle, applied by every runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_COLOURS, TINY_FASTNET, make_class_folder, run_cli

import imgclf
from imgclf.deploy.calibration import calibrate_logits, fit_temperature, negative_log_likelihood, uncalibrated


def overconfident_logits(seed: int = 0, images: int = 400, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 70%-accurate model that is far too sure of itself (its logits are 4x what fits)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, images)
    logits = rng.normal(0, 1, (images, classes))
    right = rng.random(images) < 0.7
    logits[np.arange(images), np.where(right, labels, (labels + 1) % classes)] += 2.0
    return 4.0 * logits, labels


def test_temperature_lowers_the_validation_nll_and_changes_no_argmax() -> None:
    logits, labels = overconfident_logits()
    temperature = fit_temperature(logits, labels)
    assert temperature > 2.0  # over-confident logits are cooled
    assert negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(logits, labels) - 0.1
    for other in (temperature * 0.8, temperature * 1.25):  # it is the minimum, not just an improvement
        assert negative_log_likelihood(logits, labels, other) > negative_log_likelihood(logits, labels, temperature)
    np.testing.assert_array_equal((logits / temperature).argmax(axis=1), logits.argmax(axis=1))
    calibration = calibrate_logits(logits, labels)
    assert calibration.ece_after < calibration.ece_before / 2


def test_uncalibrated_probabilities_are_recovered_from_calibrated_ones() -> None:
    from scipy.special import softmax

    logits, _ = overconfident_logits(images=20)
    np.testing.assert_allclose(uncalibrated(softmax(logits / 3.0, axis=1), 3.0), softmax(logits, axis=1), atol=1e-9)


def test_a_validation_split_without_mistakes_keeps_the_temperature_at_one() -> None:
    logits, labels = overconfident_logits(images=50)
    calibration = calibrate_logits(logits, logits.argmax(axis=1))  # nothing to fit: T -> 0 would always win
    assert calibration.temperature == 1.0 and calibration.nll_after == calibration.nll_before


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on colour classes with every fifth image under another colour's label, so val has mistakes.

    val holds 30 images: a temperature is fitted from 20 on (fewer keep T = 1).
    """
    root = tmp_path_factory.mktemp("calibrated")
    data = make_class_folder(root / "data", per_class=30)
    names = sorted(CLASS_COLOURS)
    for index, name in enumerate(names):
        for path in sorted((data / name).glob("*.png"))[::5]:
            path.rename(data / names[(index + 1) % len(names)] / f"noisy-{path.name}")
    return imgclf.train(data, out=root / "run", epochs=6, val_fraction=1 / 3, **TINY_FASTNET).run_dir


@pytest.mark.slow
def test_training_stores_a_temperature_that_the_bundle_round_trips(run: Path) -> None:
    bundle = json.loads((run / "model" / "model.json").read_text())
    calibration = bundle["metrics"]["calibration"]
    assert bundle["temperature"] == calibration["temperature"] and calibration["images"] > 0
    assert calibration["nll_after"] < calibration["nll_before"] and bundle["temperature"] != 1.0
    classifier = imgclf.load(run, tta=False)
    assert classifier.info.temperature == bundle["temperature"]
    pixels = np.stack([classifier._pixels(path) for path in sorted((run.parent / "data").rglob("*.png"))[:6]])
    from scipy.special import softmax

    expected = softmax(classifier.logits(pixels).astype(np.float64) / bundle["temperature"], axis=1)
    np.testing.assert_allclose(classifier.predict_pixels(pixels), expected, atol=1e-5)


@pytest.mark.slow
def test_calibrate_command_refits_an_older_run_and_evaluate_reports_before_and_after(run: Path, tmp_path: Path
                                                                                     ) -> None:
    bundle_file = run / "model" / "model.json"
    values = json.loads(bundle_file.read_text())
    values.pop("temperature")  # a bundle written before calibration existed
    bundle_file.write_text(json.dumps(values))
    assert imgclf.load(run).info.temperature == 1.0
    result = run_cli("calibrate", str(run))
    assert result.returncode == 0, result.stderr
    assert "temperature T =" in result.stderr and "expected calibration error" in result.stderr
    temperature = json.loads(bundle_file.read_text())["temperature"]
    assert temperature != 1.0
    evaluation = imgclf.evaluate(run, out=tmp_path / "eval")
    before = evaluation.metrics["uncalibrated"]
    assert before["temperature"] == temperature and evaluation.pictures["reliability_uncalibrated"].is_file()
    page = Path(imgclf.report(run)).read_text()
    assert f"after (T = {temperature:.3f})" in page and page.count("data:image/png") >= 2


@pytest.mark.slow
def test_calibrate_refuses_a_split_without_images_in_one_line(run: Path) -> None:
    result = run_cli("calibrate", str(run), "--split", "holdout")
    assert result.returncode == 2
    assert "--split holdout" in result.stderr and "Traceback" not in result.stderr
