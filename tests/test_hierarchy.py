"""Categories and sub-categories: nested class folders and path labels, from inspect to serve.

The data: ``warm/red``, ``warm/orange``, ``cool/blue`` and ``cool/navy``,
where blue and navy images are drawn from the same colour, so a model is
sure of ``cool`` but not of which leaf: the case --min-confidence backs off.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import TINY_ARGS, TINY_FASTNET, make_class_folder, make_image, run_cli
from fastapi.testclient import TestClient

import imgclf
from imgclf.data.hierarchy import cut_path, node_counts, same_leaf_warnings
from imgclf.deploy.predict import UNKNOWN
from imgclf.serve.app import create_app

COLOURS = {"warm/red": (220, 30, 30), "warm/orange": (230, 150, 20), "cool/blue": (30, 40, 220),
           "cool/navy": (30, 40, 220)}
SURE = 0.95  # no blue-or-navy leaf can honestly be this sure; their parent is


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("tree") / "data", per_class=16, colours=COLOURS)


@pytest.fixture(scope="module")
def run(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imgclf.train(tree, out=tmp_path_factory.mktemp("tree-run") / "run", epochs=8, **TINY_FASTNET).run_dir


@pytest.mark.slow
def test_nested_folders_train_on_the_leaf_paths(run: Path) -> None:
    assert imgclf.load(run).classes == ["cool/blue", "cool/navy", "warm/orange", "warm/red"]


@pytest.mark.slow
def test_predict_gives_the_path_and_backs_off_to_the_level_it_is_sure_of(run: Path, tree: Path) -> None:
    cool = sorted((tree / "cool").rglob("*.png"))
    rows = list(imgclf.predict(run, cool, min_confidence=SURE))
    for row in rows:
        assert [level.label.split("/")[0] for level in row.levels] == ["cool", "cool"]
        assert row.levels[0].probability == pytest.approx(float(row.probabilities[:2].sum()), abs=1e-6)
        deepest_sure = [level for level in row.levels if level.probability >= SURE]
        assert row.prediction == (deepest_sure[-1].label if deepest_sure else UNKNOWN)
    assert "cool" in {row.prediction for row in rows}, "blue and navy look alike: some answers must stop at cool"
    backed_off = next(row for row in rows if row.prediction == "cool")
    assert backed_off.confidence == backed_off.levels[0].probability
    plain = next(iter(imgclf.predict(run, [backed_off.path])))
    assert plain.prediction == plain.levels[-1].label and plain.prediction.startswith("cool/")


@pytest.mark.slow
def test_predict_csv_and_json_have_a_column_per_level(run: Path, tree: Path, tmp_path: Path) -> None:
    images = [str(tree / "warm" / "red" / "000.png"), str(tree / "cool" / "navy" / "000.png")]
    result = run_cli("predict", str(run), *images, "--min-confidence", str(SURE), "--out", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert list(rows[0])[:7] == ["path", "prediction", "confidence", "level1", "level1_confidence", "level2",
                                 "level2_confidence"]
    assert [row["level1"] for row in rows] == ["warm", "cool"] and rows[0]["level2"] == "warm/red"
    answer = run_cli("predict", str(run), *images, "--format", "json")
    records = json.loads(answer.stdout)
    assert records[1]["level1"] == "cool" and records[1]["level2"].startswith("cool/")


@pytest.mark.slow
def test_evaluation_scores_every_level(run: Path) -> None:
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    top, leaves = metrics["levels"]
    assert top["classes"] == ["cool", "warm"] and top["depth"] == 1
    assert top["accuracy"] >= leaves["accuracy"] and top["accuracy"] > 0.9
    assert leaves["accuracy"] == pytest.approx(metrics["accuracy"])
    assert sum(map(sum, top["confusion_matrix"])) == top["images"] == metrics["images"]
    assert (run / "evaluation" / "confusion_level1.png").is_file()
    page = (run / "report.html").read_text()
    assert 'id="levels"' in page and "Categories by level" in page


@pytest.mark.slow
def test_serve_answers_with_the_path(run: Path, tree: Path) -> None:
    app = create_app(imgclf.load(run, runtime="torch"), "tree", "torch", max_wait_ms=1)
    with TestClient(app) as client:
        answer = client.post("/v1/predict", files={"file": ("a.png", (tree / "warm/red/001.png").read_bytes(),
                                                           "image/png")})
    assert answer.status_code == 200, answer.text
    levels = answer.json()["predictions"][0]["levels"]
    assert [level["label"] for level in levels] == ["warm", "warm/red"] and levels[0]["depth"] == 1


KERAS = ["--backend", "tensorflow", "--model", "tutorial-cnn", "--image-size", "16", "--batch-size", "8",
         "--workers", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", [
    pytest.param(TINY_ARGS, id="torch"),
    pytest.param(KERAS, id="keras", marks=pytest.mark.tensorflow),
])
def test_label_depth_trains_on_the_cut_labels_and_evaluates_full_paths(engine: list[str], tree: Path,
                                                                       tmp_path: Path) -> None:
    result = run_cli("train", str(tree), "--out", str(tmp_path / "run"), "--epochs", "1", "--label-depth", "1",
                     *engine)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert info["classes"] == ["cool", "warm"] and info["config"]["label_depth"] == 1
    evaluated = run_cli("evaluate", str(tmp_path / "run"), str(tree), "--split", "all", "--json",
                        "--out", str(tmp_path / "evaluation"))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["images"] == 4 * 16 and "levels" not in metrics and set(metrics["per_class"]) == {"cool", "warm"}


def test_inspect_prints_the_tree_and_flags_a_name_under_two_parents(tmp_path: Path) -> None:
    for number, label in enumerate(["animals/mouse", "devices/mouse", "animals/dog/puppy", "animals/dog/puppy"]):
        make_image(tmp_path / "data" / label / f"{number}.png", (40 * number, 90, 90), seed=number)
    result = run_cli("inspect", str(tmp_path / "data"), "--out", str(tmp_path / "inspect"))
    assert result.returncode == 0, result.stderr
    assert "├── animals 3" in result.stderr and "puppy 2" in result.stderr
    warning = next(line for line in result.stderr.splitlines() if "mouse" in line and "warning" in line)
    assert "animals/mouse, devices/mouse" in warning
    report = json.loads((tmp_path / "inspect" / "report.json").read_text())
    assert report["tree"] == {"animals": 3, "animals/dog": 2, "animals/dog/puppy": 2, "animals/mouse": 1,
                              "devices": 1, "devices/mouse": 1}


def test_flat_classes_get_no_tree_and_a_broken_path_label_is_one_line(tmp_path: Path) -> None:
    assert same_leaf_warnings(["cat", "dog"]) == [] and node_counts({"cat": 2}) == {"cat": 2}
    assert cut_path("Fruit/Apple/Granny-Smith", 2) == "Fruit/Apple" and cut_path("Fruit", 3) == "Fruit"
    for number in range(2):
        make_image(tmp_path / f"{number}.png", (200, 40 * number, 40), seed=number)
    (tmp_path / "labels.csv").write_text("path,label\n0.png,Fruit//Apple\n1.png,Fruit/Pear\n")
    result = run_cli("train", str(tmp_path / "labels.csv"), "--dry-run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "'Fruit//Apple' is not a category path" in result.stderr and "labels.csv" in result.stderr
