"""MODEL_CARD.md in every trained bundle, its figures equal to model.json's, and the report's opening section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("card"), epochs=3)


def _card(run: Path) -> tuple[dict, str]:
    text = (run / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match, "the card opens with YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def _table_value(body: str, label: str) -> str:
    """The cells of the last table row headed ``label`` (a class's per-class row comes after its data row)."""
    found = re.findall(rf"^\| {re.escape(label)} \| (.+?) \|$", body, re.MULTILINE)
    assert found, f"no row {label!r} in the card"
    return found[-1]


@pytest.mark.slow
def test_the_card_has_every_section(tiny_run: Path) -> None:
    meta, body = _card(tiny_run)
    assert meta["library_name"] == "imgclf" and meta["pipeline_tag"] == "image-classification"
    for heading in ("Intended use", "Data", "Metrics", "Calibration", "Decision thresholds", "Known limitations",
                    "Training", "Lineage", "How to reproduce"):
        assert f"\n## {heading}\n" in body


@pytest.mark.slow
def test_the_card_figures_equal_model_json_and_the_evaluation(tiny_run: Path) -> None:
    meta, body = _card(tiny_run)
    info = json.loads((tiny_run / "model" / "model.json").read_text())
    metrics = info["metrics"]
    results = {result["dataset"]["split"]: result["metrics"][0]["value"] for result in meta["model-index"][0]["results"]}
    assert results == {split: metrics[f"{split}_accuracy"] for split in ("val", "test")}
    for split in ("val", "test"):
        for what in ("accuracy", "loss", "images"):
            assert float(_table_value(body, f"{split} {what}")) == metrics[f"{split}_{what}"]
    assert float(_table_value(body, "temperature")) == info["temperature"] == metrics["calibration"]["temperature"]
    assert float(_table_value(body, "expected calibration error after")) == metrics["calibration"]["ece_after"]
    evaluation = json.loads((tiny_run / "evaluation" / "metrics.json").read_text())
    for name, row in evaluation["per_class"].items():
        cells = _table_value(body, name).split(" | ")
        assert [float(cell) for cell in cells] == [row["precision"], row["recall"], row["f1"], row["support"]]
    rows = (tiny_run / "split.csv").read_text().splitlines()[1:]
    counts = [int(cell) for cell in _table_value(body, "total").split(" | ")]
    assert counts == [sum(row.endswith(f",{split}") for row in rows) for split in ("train", "val", "test")]
    assert counts[1:] == [metrics["val_images"], metrics["test_images"]]


@pytest.mark.slow
def test_the_card_names_the_weakest_classes_and_the_user_options(tiny_run: Path) -> None:
    _, body = _card(tiny_run)
    evaluation = json.loads((tiny_run / "evaluation" / "metrics.json").read_text())
    per_class = evaluation["per_class"]
    imperfect = sorted((name for name in per_class if per_class[name]["f1"] < 1), key=lambda n: (per_class[n]["f1"], n))
    weakest = re.search(r"Weakest classes \(lowest F1\): (.*)\.", body).group(1)
    assert weakest == (", ".join(imperfect[:3]) or "none, every class scored F1 1.0")
    assert "You set: " in body and "epochs=3" in body


@pytest.mark.slow
def test_the_report_opens_with_the_choices_and_folds_the_config(tiny_run: Path) -> None:
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    chosen, summary = page.index("What was chosen and why"), page.index(">Summary<")
    assert chosen < summary < page.index("<details><summary>All ")
    assert re.search(r"<td>epochs</td><td>3(\.0)?</td><td>you</td>", page)
    assert re.search(r"<td>optimizer</td><td>\w+</td><td>imgclf</td>", page)
    assert json.loads((tiny_run / "choices.json").read_text())["user_options"]["epochs"] == 3
