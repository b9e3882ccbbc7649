"""Multi-label end to end: per-label thresholds chosen, stored and obeyed; predict, evaluate, report, serve, export."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TINY_FASTNET, run_cli
from PIL import Image
from test_serve import LIMITS, start_server

import imgclf
from imgclf.data.sources import read_manifest
from imgclf.engines.linear_probe import fit_label_heads
from imgclf.errors import ImgclfError
from imgclf.serve.app import create_app

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def quadrant_manifest(root: Path, count: int = 48) -> Path:
    """16 px images with one coloured quadrant per label (1 to 3 of red, green, blue); train/val/test in the CSV."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = ["path,labels,split"]
    for number in range(count):
        names = [name for name in COLOURS if rng.random() < 0.5] or [list(COLOURS)[number % 3]]
        pixels = np.full((16, 16, 3), 128, np.int64)
        for position, name in enumerate(names):
            pixels[(position // 2) * 8:(position // 2) * 8 + 8, (position % 2) * 8:(position % 2) * 8 + 8] = \
                COLOURS[name]
        noisy = np.clip(pixels + rng.integers(-15, 15, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "img" / f"{number}.png")
        split = ["train", "train", "val", "test"][number % 4]
        rows.append(f"img/{number}.png,{'|'.join(names)},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quadrant_manifest(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(scope="module")
def run(manifest: Path) -> Path:
    result = imgclf.train(manifest, out=manifest.parent / "run", epochs=2, **TINY_FASTNET)
    return result.run_dir


def with_thresholds(run: Path, folder: Path, value: float) -> Path:
    """A copy of the run whose bundle says every label at ``value`` (the tuned thresholds replaced)."""
    shutil.copytree(run, folder)
    model_json = folder / "model" / "model.json"
    info = json.loads(model_json.read_text())
    info["thresholds"] = dict.fromkeys(info["classes"], value)
    model_json.write_text(json.dumps(info))
    return folder


@pytest.mark.slow
def test_training_chooses_a_threshold_per_label_on_val_and_keeps_it_in_the_bundle(run: Path) -> None:
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["multilabel"] and info["threshold_goal"] == "f1"
    assert set(info["thresholds"]) == {"blue", "green", "red"}
    assert all(0.0 < value < 1.0 for value in info["thresholds"].values())
    assert set(info["metrics"]["thresholds"]["red"]) == {"threshold", "precision", "recall", "f1", "met"}
    assert info["temperature"] == 1.0  # multi-label models are not temperature-scaled (see training)
    assert (run / "report.html").is_file() and "Label co-occurrence" in (run / "report.html").read_text()


@pytest.mark.slow
def test_predict_says_every_label_at_or_above_its_threshold_after_load(run: Path, manifest: Path,
                                                                        tmp_path: Path) -> None:
    images = sorted((manifest.parent / "img").glob("*.png"))[:4]
    everything, nothing = with_thresholds(run, tmp_path / "all", 0.0), with_thresholds(run, tmp_path / "none", 1.01)
    assert all(row.labels == [name for name, _ in row.top] for row in imgclf.predict(everything, images, top_k=3))
    assert all(row.labels == [] for row in imgclf.predict(nothing, images))
    classifier = imgclf.load(run)
    probabilities = classifier.predict_proba(images)
    expected = probabilities >= classifier.label_thresholds()
    for row, said in zip(imgclf.predict(run, images), expected):
        assert set(row.labels) == {name for name, flag in zip(classifier.classes, said) if flag}

    result = run_cli("predict", str(everything), *map(str, images), "--format", "csv")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0]) == ["path", "labels", "blue", "green", "red", "error"]
    assert all(set(row["labels"].split("|")) == {"blue", "green", "red"} for row in table)
    floored = list(imgclf.predict(everything, images, min_confidence=1.0))  # a floor on every label's bar
    assert all(row.labels == [] and row.confidence is None for row in floored)


@pytest.mark.slow
def test_evaluate_reports_multilabel_metrics_and_label_issues(run: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", str(run), "--label-issues", "--json", "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["multilabel"] and metrics["split"] == "test" and metrics["images"] == 12
    assert 0.0 <= metrics["mean_average_precision"] <= 1.0
    for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"):
        assert 0.0 <= metrics[key] <= 1.0 and 0.0 <= metrics["at_0.5"][key] <= 1.0
    assert set(metrics["per_label"]["red"]) >= {"average_precision", "threshold", "precision", "recall", "f1"}
    assert metrics["label_cardinality"]["true"] >= 1.0
    assert np.array(metrics["cooccurrence"]).shape == (3, 3)
    assert (tmp_path / "eval" / "pr_curves.png").is_file() and (tmp_path / "eval" / "label_issues.csv").is_file()
    with pytest.raises(ImgclfError, match="--folds: cross-validated label issues are for single-label models"):
        imgclf.evaluate(run, folds=2, out=tmp_path / "folds")


def test_a_model_that_misses_and_invents_labels_is_measured_as_such() -> None:
    from imgclf.evaluation.multilabel import find_multilabel_issues, multilabel_metrics, worst_mistakes

    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 1]] * 5)
    probabilities = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.9], [0.1, 0.8]] * 5, dtype=float)
    probabilities[0] = [0.05, 0.95]  # image 0: red missed, green invented
    metrics = multilabel_metrics(truth, probabilities, ["red", "green"], np.array([0.5, 0.5]))
    assert metrics["subset_accuracy"] == pytest.approx(19 / 20) and metrics["hamming_loss"] == pytest.approx(2 / 40)
    mistakes = worst_mistakes([f"{i}.png" for i in range(20)], truth, probabilities, probabilities >= 0.5,
                              ["red", "green"])
    assert mistakes == [{"path": "0.png", "labels": ["red"], "missed": {"red": 0.05}, "spurious": {"green": 0.95}}]
    issues = find_multilabel_issues([f"{i}.png" for i in range(20)], truth, probabilities, ["red", "green"])
    assert {(issue["path"], issue["given"], issue["predicted"]) for issue in issues} == {
        ("0.png", "red", "not red"), ("0.png", "not green", "green")}


@pytest.mark.slow
def test_serve_answers_the_chosen_labels(run: Path, manifest: Path) -> None:
    classifier = imgclf.load(run, runtime="torch")
    classifier.info.thresholds = dict.fromkeys(classifier.classes, 0.0)
    url, server, thread = start_server(create_app(classifier, "quadrants", "torch", LIMITS, max_wait_ms=1))
    try:
        image = (manifest.parent / "img" / "0.png").read_bytes()
        answer = httpx.post(f"{url}/v1/predict", files={"file": ("0.png", image, "image/png")}, timeout=30).json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    prediction = answer["predictions"][0]
    assert sorted(prediction["labels"]) == ["blue", "green", "red"] and prediction["confidence"] is None


@pytest.mark.slow
def test_onnx_export_of_a_sigmoid_model_keeps_parity(run: Path, manifest: Path) -> None:
    exported = imgclf.export(run, "onnx")
    meta = json.loads(Path(str(exported.path) + ".json").read_text())
    assert meta["output"]["activation"] == "sigmoid" and meta["parity"]["max_abs_diff"] <= 1e-4
    images = sorted((manifest.parent / "img").glob("*.png"))[:6]
    on_onnx, on_torch = imgclf.load(run, runtime="onnx"), imgclf.load(run, runtime="torch", precision="fp32")
    np.testing.assert_allclose(on_onnx.predict_proba(images), on_torch.predict_proba(images), atol=1e-4)
    with pytest.raises(ImgclfError, match="--quantize int8 is checked by single-label accuracy"):
        imgclf.export(run, "onnx", quantize="int8")


def test_inspect_shows_label_counts_and_cooccurrence(manifest: Path, tmp_path: Path) -> None:
    result = run_cli("inspect", str(manifest), "--out", str(tmp_path / "inspect"))
    assert result.returncode == 0, result.stderr
    assert "48 images" in result.stderr and "labels most often together:" in result.stderr
    report = json.loads((tmp_path / "inspect" / "report.json").read_text())
    assert sum(report["splits"].values()) == 48  # images, not label assignments
    sets = report["label_sets"]
    assert sum(sets["labels_per_image"].values()) == 48 and np.array(sets["matrix"]).shape == (3, 3)
    assert all(len(pair["labels"]) == 2 and pair["images"] > 0 for pair in sets["top_pairs"])


def test_an_empty_label_set_is_one_line_naming_the_csv_row_and_what_to_write(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    for cell in ("", " | "):
        (tmp_path / "labels.csv").write_text(f"path,labels\na.png,red\na.png,{cell}\n")
        with pytest.raises(ImgclfError, match=re.escape(f"{tmp_path / 'labels.csv'}:3: the labels cell of a.png")):
            read_manifest(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("path,labels\na.png,red\na.png,|\n")
    result = run_cli("train", str(tmp_path / "labels.csv"), "--dry-run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'labels.csv'}:3" in result.stderr and "separated by |" in result.stderr


def test_the_probe_is_one_vs_rest_logistic_regression() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((120, 3)) < 0.4
    truth[:, 2] = True  # on every image: nothing to separate, a bias only
    features = truth[:, :2].astype(float) @ rng.normal(0, 3, (2, 8)) + rng.normal(0, 0.3, (120, 8)) + 5
    fit = fit_label_heads(features[:90], truth[:90], features[90:], truth[90:])
    logits = features[90:] @ fit.weight.T + fit.bias
    assert fit.weight.shape == (3, 8) and not fit.weight[2].any() and fit.bias[2] > 3
    assert ((logits > 0) == truth[90:]).all() and fit.val_accuracy == 1.0


@pytest.mark.tensorflow
def test_keras_engine_trains_multilabel_with_thresholds(manifest: Path, tmp_path: Path) -> None:
    imgclf.train(manifest, out=tmp_path / "keras", backend="tensorflow", model="tutorial-cnn", epochs=1, image_size=16,
                 batch_size=8, workers=1)
    info = json.loads((tmp_path / "keras" / "model" / "model.json").read_text())
    assert info["backend"] == "tensorflow" and info["multilabel"] and set(info["thresholds"]) == set(COLOURS)
    rows = list(imgclf.predict(tmp_path / "keras", sorted((manifest.parent / "img").glob("*.png"))[:3]))
    assert all(row.labels is not None and not row.error for row in rows)
    probabilities = rows[0].probabilities
    assert probabilities is not None and not np.isclose(probabilities.sum(), 1.0)  # independent sigmoids
    exported = imgclf.export(tmp_path / "keras", "tflite")  # parity-checked on sigmoid probabilities
    assert json.loads(Path(str(exported.path) + ".json").read_text())["output"]["activation"] == "sigmoid"
