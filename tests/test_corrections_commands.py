"""--corrections and --rename on the commands that read data: train, inspect, evaluate (tune goes through train's plan)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ARGS, make_class_folder, make_image, run_cli

from imgclf.data import corrections
from imgclf.runs import RunDirectory

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "crimson": (215, 35, 35)}


def split_labels(run: Path) -> dict[str, str]:
    with open(run / "split.csv", encoding="utf-8") as handle:
        return {Path(row["path"]).parent.name + "/" + Path(row["path"]).name: row["label"]
                for row in csv.DictReader(handle)}


def write_corrections(path: Path, rows: list[str]) -> Path:
    path.write_text("path,action,label,reason,time\n" + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_train_excludes_relabels_merges_and_reports_a_missing_file(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=12, colours=COLOURS)
    fixes = write_corrections(tmp_path / "fixes.csv", [
        "red/000.png,exclude,,blurry,2026-01-01T00:00:00Z",
        f"{data / 'green' / '001.png'},relabel,blue,wrong folder,",
        "green/gone.png,exclude,,moved away,",
    ])
    run = tmp_path / "run"
    result = run_cli("train", str(data), "--corrections", str(fixes), "--rename", "crimson=red", "--out", str(run),
                     "--epochs", "1", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "corrections: 1 excluded, 1 relabelled, 12 renamed (1 class rename(s)), 0 kept" in output
    assert "1 correction(s) found no single file or class" in output and "green/gone.png" in output
    labels = split_labels(run)
    assert "red/000.png" not in labels and len(labels) == 4 * 12 - 1
    assert labels["green/001.png"] == "blue"
    assert labels["crimson/005.png"] == "red" and "crimson" not in labels.values()
    model = json.loads((run / "model" / "model.json").read_text())
    assert model["classes"] == ["blue", "green", "red"]
    record = RunDirectory(run).read_corrections()
    assert record is not None
    rows = corrections.load_corrections(fixes, ["crimson=red"])
    assert record["digest"] == corrections.digest(rows) and record["file"] == str(fixes)
    assert record["applied"]["missing"] == ["green/gone.png"] and record["rename"] == ["crimson=red"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["corrections"] == str(fixes) and config["rename"] == ["crimson=red"]


def test_a_test_class_spelt_differently_is_refused_with_the_rename_that_fixes_it(tmp_path: Path) -> None:
    for split, names in (("train", ("cat", "dog")), ("test", ("Cat", "dog"))):
        for name in names:
            for number in range(6):
                make_image(tmp_path / "d" / split / name / f"{number}.png", (40 * number, 90, 30), seed=number)
    refused = run_cli("train", str(tmp_path / "d"), "--dry-run", *TINY_ARGS)
    assert refused.returncode == 2
    assert "'Cat' (only in test)" in refused.stderr and "--rename Cat=cat" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    planned = run_cli("train", str(tmp_path / "d"), "--dry-run", "--rename", "Cat=cat", *TINY_ARGS)
    assert planned.returncode == 0, planned.stderr
    assert yaml.safe_load(planned.stdout)["rename"] == ["Cat=cat"]


@pytest.mark.parametrize(("rows", "message"), [
    (["a.png,move,,,"], r"fixes\.csv:2: unknown action 'move'; expected one of keep, exclude, relabel, rename"),
    (["a,rename,b,,", "b,rename,a,,"], r"fixes\.csv: class renames form a cycle \(a -> b -> a\)"),
])
def test_a_bad_corrections_file_stops_train_in_one_line(tmp_path: Path, class_folder: Path, rows: list[str],
                                                        message: str) -> None:
    result = run_cli("train", str(class_folder), "--corrections", str(write_corrections(tmp_path / "fixes.csv", rows)),
                     "--dry-run", *TINY_ARGS)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr


def test_a_rename_option_without_equals_is_refused(class_folder: Path) -> None:
    result = run_cli("train", str(class_folder), "--rename", "red", "--dry-run", *TINY_ARGS)
    assert result.returncode == 2 and "--rename 'red': expected OLD=NEW" in result.stderr


def test_inspect_reports_the_corrected_data(tmp_path: Path, class_folder: Path) -> None:
    fixes = write_corrections(tmp_path / "fixes.csv", ["red/000.png,exclude,,,", "red/001.png,relabel,pink,,"])
    result = run_cli("inspect", str(class_folder), "--json", "--out", str(tmp_path / "o"), "--corrections",
                     str(fixes), "--rename", "green=lime")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["classes"] == ["blue", "lime", "pink", "red"]
    assert report["counts"]["red"]["unsplit"] == 8 and report["counts"]["pink"]["unsplit"] == 1
    assert report["corrections"]["applied"]["excluded"] == 1
    assert report["corrections"]["digest"] == corrections.digest(corrections.load_corrections(fixes, ["green=lime"]))


def test_evaluate_applies_corrections_to_the_runs_split(tiny_run: Path, tmp_path: Path) -> None:
    test_rows = [row for row in csv.DictReader(open(tiny_run / "split.csv")) if row["split"] == "test"]
    excluded = Path(test_rows[0]["path"])
    fixes = write_corrections(tmp_path / "fixes.csv", [f"{excluded.parent.name}/{excluded.name},exclude,,,"])
    out = tmp_path / "evaluation"
    result = run_cli("evaluate", str(tiny_run), "--out", str(out), "--corrections", str(fixes), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == len(test_rows) - 1
    assert json.loads((out / "corrections.json").read_text())["applied"]["excluded"] == 1
