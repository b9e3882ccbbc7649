"""Evaluate, report and predict on a trained run, through the Python API and the CLI."""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import browser_page, copy_run, make_class_folder, make_image, run_cli

import imgclf
from imgclf.errors import ImgclfError

SECTIONS = ("chosen", "summary", "configuration", "data", "curves", "metrics", "confusion", "roc", "reliability", "samples",
            "augmentation", "mistakes", "label-issues")


@pytest.fixture(scope="module")
def trained(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run, copied: evaluations and a regenerated report are written into it."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("trained"))


def test_training_ends_with_a_self_contained_report(trained: Path) -> None:
    page = (trained / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) >= 6  # + mistakes, when there are any
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    metrics = json.loads((trained / "evaluation" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 6


def test_report_configuration_shows_values_as_a_person_writes_them(trained: Path) -> None:
    page = (trained / "report.html").read_text()
    section = re.search(r'<section id="configuration">(.*?)</section>', page, re.S).group(1)  # type: ignore[union-attr]
    values = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", section))
    assert values["lr"] == "0.5" and values["label_smoothing"] == "0" and values["model"] == "fastnet"
    assert values["group_by"] == "none" and values["pretrained"] == "false"
    assert values["model_args"] == "{widths: [8, 16, 16], depth: 1}"
    weight_decay = yaml.safe_load((trained / "config.yaml").read_text())["weight_decay"]  # chosen from the data
    assert values["weight_decay"] == f"{weight_decay:.4g}" and len(values["weight_decay"]) < len(str(weight_decay))
    assert not any("..." in value for value in values.values())


def test_evaluate_on_other_data_with_label_issues(trained: Path, tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "fresh", per_class=6, seed=7)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    make_image(data / "red" / "really-blue.png", (30, 40, 220), seed=99)  # a planted label error
    with warnings.catch_warnings():  # the galleries' Grad-CAM reads cached (read-only) pixels: no torch warning
        warnings.simplefilter("error")
        result = imgclf.evaluate(trained, data, out=tmp_path / "eval", label_issues=True)
    assert result.metrics["images"] == 19 and result.metrics["skipped"] == 1
    assert result.metrics["accuracy"] >= 0.9
    assert result.label_issues and result.label_issues[0]["path"].endswith("really-blue.png")
    for name in ("metrics.json", "confusion_matrix.png", "roc.png", "reliability.png", "label_issues.csv",
                 "label_issues.png", "worst_mistakes.png", "worst_mistakes.csv", "skipped.txt"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "really-blue.png,red,blue," in (tmp_path / "eval" / "worst_mistakes.csv").read_text()  # the review page's


def test_evaluate_refuses_unknown_labels_and_training_only_data(trained: Path, tmp_path: Path) -> None:
    make_image(tmp_path / "other" / "purple" / "0.png", (120, 0, 120))
    with pytest.raises(ImgclfError, match="labels the model does not know: purple"):
        imgclf.evaluate(trained, tmp_path / "other")
    make_class_folder(tmp_path / "split" / "train", per_class=2)
    with pytest.raises(ImgclfError, match="only training images"):
        imgclf.evaluate(trained, tmp_path / "split")


def test_evaluate_names_the_splits_the_data_has(trained: Path, tmp_path: Path) -> None:
    unsplit = make_class_folder(tmp_path / "unsplit", per_class=2)
    result = run_cli("evaluate", str(trained), str(unsplit), "--split", "train", "--out", str(tmp_path / "e"))
    assert result.returncode == 2
    assert ("has no images in that split; it has only unsplit images (no train/val/test folders or split column); "
            "use --split all") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    make_class_folder(tmp_path / "split" / "test", per_class=2)
    result = run_cli("evaluate", str(trained), str(tmp_path / "split"), "--split", "val", "--out", str(tmp_path / "e"))
    assert "it has only the splits test; use --split test or --split all" in result.stderr
    everything = run_cli("evaluate", str(trained), str(unsplit), "--split", "all", "--json", "--out", str(tmp_path / "e"))
    assert everything.returncode == 0, everything.stderr
    assert json.loads(everything.stdout)["images"] == 6


def test_cli_evaluate_prints_a_table_and_writes_metrics(trained: Path) -> None:
    result = run_cli("evaluate", str(trained))
    assert result.returncode == 0, result.stderr
    assert "macro avg" in result.stderr and "accuracy" in result.stderr
    as_json = run_cli("evaluate", str(trained), "--json")
    assert json.loads(as_json.stdout)["images"] == 6


@pytest.mark.slow
def test_one_model_on_one_split_gives_one_number_everywhere(backbone_weights: Path, tmp_path: Path) -> None:
    # a probe-only run: its training loop scores from float16 cached embeddings, the bundle in full precision
    data = make_class_folder(tmp_path / "data", per_class=12)
    run = imgclf.train(data, out=tmp_path / "run", model="test_resnet", weights=str(backbone_weights), strategy="probe",
                       precision="fp32", batch_size=16, image_size=32, workers=1)
    bundle = json.loads((run.model_dir / "model.json").read_text())["metrics"]
    report = json.loads((run.run_dir / "evaluation" / "metrics.json").read_text())
    evaluated = run_cli("evaluate", str(run.run_dir), "--json", "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    evaluated_metrics = json.loads(evaluated.stdout)
    assert run.metrics == bundle and bundle["test_images"] == evaluated_metrics["images"] == report["images"]
    for metrics in (report, evaluated_metrics):
        assert bundle["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
        assert bundle["test_loss"] == pytest.approx(metrics["log_loss"], abs=1e-6)
    held_out = run.held_out_probabilities  # what the report read instead of predicting val and test again
    assert len(held_out) == bundle["val_images"] + bundle["test_images"]
    predicted = {row.path: row.probabilities for row in imgclf.predict(run.run_dir, list(held_out))}
    for path, probabilities in held_out.items():
        assert probabilities == pytest.approx(predicted[path], abs=1e-5)


def test_evaluate_takes_known_probabilities_instead_of_decoding_again(trained: Path, tmp_path: Path) -> None:
    import numpy as np

    from imgclf.evaluation.evaluate import evaluate, evaluation_items

    classifier = imgclf.load(trained)
    items, split = evaluation_items(trained, None, None)
    gone = replace(items[0], path=tmp_path / "deleted-since.png")  # no such file: only its known answer can count
    wrong = np.eye(len(classifier.classes))[(classifier.classes.index(gone.labels[0]) + 1) % len(classifier.classes)]
    result = evaluate(classifier, [gone, *items], split, tmp_path / "eval", known={str(gone.path): wrong})
    alone = evaluate(classifier, items, split, tmp_path / "alone")
    assert result.metrics["images"] == len(items) + 1 and result.metrics["skipped"] == 0
    right = alone.metrics["accuracy"] * len(items)
    assert result.metrics["accuracy"] == pytest.approx(right / (len(items) + 1))


def test_cli_report_regenerates_the_page(trained: Path) -> None:
    (trained / "report.html").unlink()
    result = run_cli("report", str(trained))
    assert result.returncode == 0, result.stderr
    assert 'id="confusion"' in (trained / "report.html").read_text()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = make_class_folder(tmp_path / "new", per_class=3, seed=3)
    (folder / "green" / "truncated.png").write_bytes((folder / "green" / "000.png").read_bytes()[:60])
    return folder


def test_predict_table_for_a_few_images(trained: Path, inputs: Path) -> None:
    result = run_cli("predict", str(trained), str(inputs / "red" / "000.png"), str(inputs / "blue" / "001.png"),
                     "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "000.png → red" in result.stderr and "001.png → blue" in result.stderr
    assert result.stderr.count("%") == 4  # two classes per image


def test_predict_reports_a_symlink_loop_in_a_folder_as_unreadable(trained: Path, tmp_path: Path) -> None:
    folder = make_class_folder(tmp_path / "new", per_class=1)
    (folder / "red" / "loop_a.png").symlink_to(folder / "red" / "loop_b.png")
    (folder / "red" / "loop_b.png").symlink_to(folder / "red" / "loop_a.png")
    result = run_cli("predict", str(trained), str(folder), "--format", "json")
    assert result.returncode == 0, result.stderr
    errors = {Path(row["path"]).name: row["error"] for row in json.loads(result.stdout) if row.get("error")}
    assert set(errors) == {"loop_a.png", "loop_b.png"} and "symbolic links" in errors["loop_a.png"]


@pytest.mark.parametrize("output_format", ["csv", "json", "jsonl"])
def test_predict_streams_every_format_with_error_rows(output_format: str, trained: Path, inputs: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / f"predictions.{output_format}"
    result = run_cli("predict", str(trained), str(inputs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "10 images" in result.stderr and "1 unreadable" in result.stderr
    text = out.read_text()
    if output_format == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert list(rows[0]) == ["path", "prediction", "confidence", "blue", "green", "red", "error"]
    elif output_format == "json":
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 10
    broken = [row for row in rows if row["error"]]
    assert len(broken) == 1 and broken[0]["path"].endswith("truncated.png")
    good = [row for row in rows if not row["error"]]
    assert all(Path(row["path"]).parent.name == row["prediction"] for row in good)


def test_predict_min_confidence_answers_unknown_and_is_deterministic(trained: Path, inputs: Path) -> None:
    first = [row.prediction for row in imgclf.predict(trained, inputs, min_confidence=0.999999)]
    assert set(first) == {"unknown", ""}  # "" is the unreadable file's row
    again = [(row.path, row.top) for row in imgclf.predict(trained, inputs)]
    assert again == [(row.path, row.top) for row in imgclf.predict(trained, inputs)]


def test_predict_inputs_from_globs_list_files_and_stdin(trained: Path, inputs: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"{inputs / 'red' / '000.png'}\n# a comment\n{inputs / 'red' / '001.png'}\n")
    rows = list(imgclf.predict(trained, [f"@{listing}", str(inputs / "blue" / "*.png")]))
    assert [Path(row.path).name for row in rows] == ["000.png", "001.png", "000.png", "001.png", "002.png"]
    result = run_cli("predict", str(trained), "-", "--format", "jsonl", stdin=f"{inputs / 'red' / '000.png'}\n")
    assert json.loads(result.stdout)["prediction"] == "red"
    missing = run_cli("predict", str(trained), str(tmp_path / "nothing-*.png"))
    assert missing.returncode == 2 and "matches no files" in missing.stderr


def test_python_predict_accepts_arrays_and_pil_images(trained: Path, inputs: Path) -> None:
    from PIL import Image

    classifier = imgclf.load(trained)
    image = Image.open(inputs / "red" / "000.png")
    by_path, by_pil, by_array = classifier.predict([inputs / "red" / "000.png", image, __import__("numpy").asarray(image)])
    assert by_path[0][0] == by_pil[0][0] == by_array[0][0] == "red"


def test_report_renders_in_a_browser_with_no_network(trained: Path, chromium: str) -> None:
    with browser_page(chromium) as (page, requests):
        page.goto((trained / "report.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(image => image.complete && image.naturalWidth)")
        sections = page.eval_on_selector_all("section", "sections => sections.map(section => section.id)")
        heading = page.inner_text("h1")
    assert len(widths) >= 6 and all(width > 0 for width in widths)
    assert list(SECTIONS) == sections
    assert "fastnet" in heading
    assert all(url.startswith(("file:", "data:")) for url in requests)


@pytest.mark.slow
def test_label_issues_from_cross_validation_use_held_out_predictions_only(trained: Path, tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "fresh", per_class=8, seed=11)
    result = imgclf.evaluate(trained, data, out=tmp_path / "eval", folds=2)
    assert result.metrics["label_issues_from"] == "2-fold cross-validation"
    held_out = []
    for fold in (1, 2):
        rows = list(csv.DictReader(open(tmp_path / "eval" / "folds" / f"fold-{fold}.csv")))
        test = {row["path"] for row in rows if row["split"] == "test"}
        assert not test & {row["path"] for row in rows if row["split"] == "train"}
        held_out.append(test)
        assert (tmp_path / "eval" / "folds" / f"fold-{fold}" / "model" / "model.json").is_file()
    assert not held_out[0] & held_out[1] and len(held_out[0] | held_out[1]) == 24
    assert (tmp_path / "eval" / "label_issues.csv").is_file()
