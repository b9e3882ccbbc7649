"""Ensembles: members weighed on validation (fitted where that pays out of sample), one bundle that every command
treats as one model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FASTNET, make_class_folder, run_cli

import imgclf
from imgclf.evaluation.metrics import compute_log_loss
from imgclf.workflows.ensemble_weights import choose_weights, cross_fitted_probabilities, fit_weights


def test_fitted_weights_favour_the_better_member_and_beat_equal_weights() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    good[np.arange(300), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), 300)
    weights = fit_weights([good, noise], labels)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > 0.8
    fitted = compute_log_loss(labels, weights[0] * good + weights[1] * noise, 3)
    assert fitted < compute_log_loss(labels, 0.5 * good + 0.5 * noise, 3)


def _members(rng: np.random.Generator, labels: np.ndarray, right: tuple[float, float]) -> list[np.ndarray]:
    """Two members that give the true class ``right[m]`` of their probability and spread the rest at random."""
    made = []
    for share in right:
        rows = rng.dirichlet(np.ones(3), len(labels)) * (1 - share)
        rows[np.arange(len(labels)), labels] += share
        made.append(rows)
    return made


def test_auto_fits_weights_only_where_they_beat_equal_weights_on_images_they_did_not_see() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    unequal = _members(rng, labels, (0.8, 0.05))  # one member far better: fitting pays out of sample
    weights, evidence = choose_weights(unequal, labels, "auto")
    assert evidence["weighting"] == "fit" and weights[0] > 0.8
    assert evidence["fitted_cross_fitted_val_log_loss"] < evidence["equal_val_log_loss"]
    alike = _members(rng, labels, (0.5, 0.5))  # exchangeable members: any fitted tilt is the sample's noise
    weights, evidence = choose_weights(alike, labels, "auto")
    assert evidence["weighting"] == "equal" and weights.tolist() == [0.5, 0.5]
    assert evidence["fitted_cross_fitted_val_log_loss"] >= evidence["equal_val_log_loss"]
    assert choose_weights(alike, labels, "fit")[1] == {"weighting": "fit"}


def test_cross_fitting_holds_a_class_with_fewer_images_than_folds_and_tiny_classes_alone() -> None:
    rng = np.random.default_rng(2)
    labels = np.array([0] * 30 + [1] * 3)  # class 1 cannot be in every fold: stratified on class 0 alone
    members = _members(rng, labels, (0.8, 0.1))
    assert cross_fitted_probabilities(members, labels).shape == (33, 3)
    few = np.arange(12) % 3  # no class has an image per fold: plain folds
    assert cross_fitted_probabilities(_members(rng, few, (0.8, 0.1)), few).sum(axis=1) == pytest.approx(np.ones(12))


def test_auto_keeps_equal_weights_when_val_is_too_small_to_hold_out_a_fold() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 6)
    weights, evidence = choose_weights(_members(rng, labels, (0.9, 0.0)), labels, "auto")
    assert evidence["weighting"] == "equal" and evidence["fitted_cross_fitted_val_log_loss"] is None
    assert weights.tolist() == [0.5, 0.5]


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two runs on the same data and split: fastnet at 16 px and tutorial-cnn at 24 px (other size and network)."""
    root = tmp_path_factory.mktemp("ensemble")
    data = make_class_folder(root / "data", per_class=20)
    first = imgclf.train(data, out=root / "fastnet", epochs=4, **TINY_FASTNET).run_dir
    second = imgclf.train(data, out=root / "cnn", model="tutorial-cnn", image_size=24, epochs=3, batch_size=16,
                          model_args={"widths": [8, 16], "hidden": 16}, precision="fp32", workers=1).run_dir
    return root, first, second


@pytest.mark.slow
def test_an_ensemble_bundle_round_trips_and_serves_every_command(members, tmp_path: Path) -> None:
    root, first, second = members
    result = run_cli("ensemble", str(first), str(second), "--out", str(tmp_path / "E"), "--weights", "fit")
    assert result.returncode == 0, result.stderr  # fitted: unequal weights, so a member given another's weight shows
    assert json.loads((tmp_path / "E" / "ensemble.json").read_text())["weighting"] == "fit"
    assert "over the best member" in result.stderr and (tmp_path / "E" / "report.html").is_file()
    bundle = json.loads((tmp_path / "E" / "model" / "model.json").read_text())
    assert bundle["kind"] == "ensemble" and sum(member["weight"] for member in bundle["members"]) == pytest.approx(1, abs=1e-5)
    ensemble = imgclf.load(tmp_path / "E")
    images = sorted((root / "data").rglob("*.png"))[::7]
    expected = sum(member["weight"] * imgclf.load(tmp_path / "E" / "model" / member["path"]).predict_proba(images)
                   for member in bundle["members"])
    np.testing.assert_allclose(ensemble.predict_proba(images), expected, atol=1e-5)
    rows = list(imgclf.predict(tmp_path / "E", images))
    np.testing.assert_allclose(np.stack([row.probabilities for row in rows]), expected, atol=1e-5)
    assert imgclf.evaluate(tmp_path / "E", out=tmp_path / "eval").metrics["accuracy"] > 0.5
    exported = imgclf.export(tmp_path / "E", "onnx")
    assert exported.parity.max_abs_diff <= 1e-4 and exported.parity.top1_agreement == 1.0
    listing = json.loads((tmp_path / "E" / "model" / "ensemble.onnx.json").read_text())
    assert [member["file"] for member in listing["members"]] == [f"{m['path']}/model.onnx" for m in bundle["members"]]
    on_onnx = imgclf.load(tmp_path / "E", runtime="onnx")
    assert on_onnx.runtime.name == "ensemble(onnx,onnx)"
    exact = sum(member["weight"] * imgclf.load(tmp_path / "E" / "model" / member["path"], precision="fp32",
                                               runtime="torch").predict_proba(images) for member in bundle["members"])
    np.testing.assert_allclose(on_onnx.predict_proba(images), exact, atol=1e-4)  # ONNX Runtime is fp32


@pytest.mark.slow
def test_members_with_other_classes_are_refused_in_one_line(members, tmp_path: Path) -> None:
    root, first, _ = members
    other = make_class_folder(tmp_path / "other", per_class=6)
    (other / "blue").rename(other / "navy")
    run = imgclf.train(other, out=tmp_path / "navy", epochs=1, **TINY_FASTNET).run_dir
    result = run_cli("ensemble", str(first), str(run), "--out", str(tmp_path / "E"))
    assert result.returncode == 2 and "other classes" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_ensemble_of_fresh_runs_reads_their_kept_outputs_and_scores_as_a_fresh_prediction_would(
        members, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members' val/test probabilities come from the logits their training kept: no image is predicted again,
    and the scores equal those of an ensemble whose members predict every image (kept logits removed)."""
    from imgclf.deploy.classifier import Classifier
    from imgclf.workflows.ensemble import build_ensemble

    _, first, second = members
    predicted: list[int] = []
    original = Classifier.file_probabilities

    def counting(self, paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        predicted.append(len(paths))
        return original(self, paths, *args, **kwargs)

    monkeypatch.setattr(Classifier, "file_probabilities", counting)
    from_kept = build_ensemble([first, second], tmp_path / "kept")
    assert sum(predicted) == 0
    stale = tmp_path / "stale"
    for name, run in (("a", first), ("b", second)):
        shutil.copytree(run, stale / name)
        (stale / name / "held_out_logits.json").unlink()
    from_files = build_ensemble([stale / "a", stale / "b"], tmp_path / "files")
    assert sum(predicted) > 0
    for split, scores in from_kept.scores["ensemble"].items():
        assert scores["accuracy"] == from_files.scores["ensemble"][split]["accuracy"]
        assert scores["log_loss"] == pytest.approx(from_files.scores["ensemble"][split]["log_loss"], abs=1e-3)
