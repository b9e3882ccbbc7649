"""Binary decisions: a threshold chosen on val for the user's goal, kept in the bundle, used by every output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FASTNET, make_class_folder, run_cli

import imgclf
from imgclf.errors import ImgclfError
from imgclf.thresholds import positive_class

COLOURS = {"orange": (200, 110, 30), "red": (215, 40, 30)}  # close colours: a model that is not always sure


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("binary") / "data", per_class=24, colours=COLOURS)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fastnet that says 'red' only at P(red) >= 0.99: a fixed threshold far from the argmax's 0.5."""
    return imgclf.train(data, out=tmp_path_factory.mktemp("binary-run") / "run", epochs=2, threshold_for="0.99",
                        **TINY_FASTNET).run_dir


def _model_json(run: Path) -> dict:
    return json.loads((run / "model" / "model.json").read_text())


@pytest.mark.slow
def test_the_threshold_is_stored_and_every_output_decides_with_it_after_load(run: Path, data: Path) -> None:
    info = _model_json(run)
    assert (info["positive"], info["thresholds"], info["threshold_goal"]) == ("red", {"red": 0.99}, "0.99")
    assert info["metrics"]["decision"]["threshold"] == 0.99
    images = sorted(data.rglob("*.png"))
    out = run.parent / "predictions.csv"
    result = run_cli("predict", str(run), str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out)))
    assert [Path(row["path"]) for row in rows] == images
    for row in rows:  # the rule of model.json, not the argmax
        assert row["prediction"] == ("red" if float(row["red"]) >= 0.99 else "orange"), row
    overruled = [row for row in rows if 0.5 < float(row["red"]) < 0.99]
    assert overruled, "no image between 0.5 and 0.99: the test cannot tell the threshold from the argmax"
    assert all(row["prediction"] == "orange" for row in overruled)
    clf = imgclf.load(run)
    python = [ranked[0][0] for ranked in clf.predict(images)]  # the decided class comes first
    assert python == [row["prediction"] for row in rows]
    with open(images[0], "rb") as handle:
        upload = handle.read()
    from fastapi.testclient import TestClient

    from imgclf.serve.app import create_app

    with TestClient(create_app(clf, "binary", "torch")) as client:
        answer = client.post("/v1/predict", content=upload, headers={"content-type": "image/png"}).json()
        assert answer["predictions"][0]["prediction"] == rows[0]["prediction"]
        assert client.get("/v1/model").json()["thresholds"] == {"red": 0.99}


@pytest.mark.slow
def test_evaluate_and_the_report_show_the_decision_its_curves_and_other_thresholds(run: Path) -> None:
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())  # the report's evaluate, on test
    decision = metrics["decision"]
    assert (decision["positive"], decision["threshold"], decision["goal"]) == ("red", 0.99, "0.99")
    classes = ["orange", "red"]
    confusion = metrics["confusion_matrix"]  # at the threshold: the same counts as the decision's
    assert confusion[classes.index("red")][classes.index("red")] == decision["true_positives"]
    assert confusion[classes.index("orange")][classes.index("red")] == decision["false_positives"]
    assert [row["goal"] for row in decision["alternatives"]] == [
        "f1", "precision=0.9", "precision=0.95", "precision=0.99", "recall=0.9", "recall=0.95", "recall=0.99", "0.5"]
    for row in decision["alternatives"]:
        assert {"threshold", "precision", "recall", "f1", "false_positive_rate"} <= set(row)
    page = (run / "report.html").read_text()
    assert 'id="decision"' in page and "recall=0.95" in page and "false positive rate" in page
    assert (run / "evaluation" / "roc.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--positive", "purple"], "--positive purple: no such class; the classes are orange, red"),
    (["--threshold-for", "precision=1.5"], "--threshold-for 'precision=1.5': 1.5 is outside 0..1"),
])
def test_bad_decision_options_are_one_line(args: list[str], message: str, data: Path, tmp_path: Path) -> None:
    result = run_cli("train", str(data), "--out", str(tmp_path / "run"), "--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_positive_is_the_second_class_by_default_and_needs_exactly_two(tmp_path: Path) -> None:
    assert positive_class(["cat", "dog"], None) == "dog"
    assert positive_class(["cat", "dog"], "cat") == "cat"
    assert positive_class(["a", "b", "c"], None) is None
    three = make_class_folder(tmp_path / "three", per_class=4)
    with pytest.raises(ImgclfError, match="--positive red: a binary decision needs exactly 2 classes, found 3"):
        imgclf.train(three, out=tmp_path / "run", positive="red", dry_run=True)


@pytest.mark.slow
def test_an_old_bundle_without_thresholds_decides_by_argmax(run: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run / "model", old)
    values = json.loads((old / "model.json").read_text())
    values.update(positive=None, thresholds={}, threshold_goal="")
    (old / "model.json").write_text(json.dumps(values))
    clf = imgclf.load(old)
    probabilities = np.array([[0.3, 0.7], [0.6, 0.4], [0.02, 0.98]])
    assert clf.decide(probabilities).tolist() == [1, 0, 1]
    assert imgclf.load(run).decide(probabilities).tolist() == [0, 0, 0]  # red only at 0.99


@pytest.mark.slow
def test_an_onnx_export_carries_the_decision_and_decides_the_same(run: Path, data: Path) -> None:
    result = imgclf.export(run, "onnx")
    metadata = json.loads(result.metadata.read_text())
    assert metadata["decision"] == {"positive": "red", "thresholds": {"red": 0.99}, "goal": "0.99"}
    images = sorted(data.rglob("*.png"))
    torch_labels = [row.prediction for row in imgclf.load(run, runtime="torch").predict_files(images)]
    onnx_labels = [row.prediction for row in imgclf.load(run, runtime="onnx").predict_files(images)]
    assert onnx_labels == torch_labels


@pytest.mark.tensorflow
def test_the_keras_engine_gets_the_same_decision(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "keras"
    result = run_cli("train", str(data), "--out", str(run), "--backend", "tensorflow", "--image-size", "16",
                     "--batch-size", "8", "--workers", "1", "--epochs", "1", "--positive", "orange",
                     "--threshold-for", "recall=0.9")
    assert result.returncode == 0, result.stderr
    info = _model_json(run)
    assert info["backend"] == "tensorflow" and info["positive"] == "orange" and info["threshold_goal"] == "recall=0.9"
    threshold = info["thresholds"]["orange"]
    decision = json.loads((run / "evaluation" / "metrics.json").read_text())["decision"]
    assert decision["positive"] == "orange" and decision["threshold"] == pytest.approx(threshold)
