"""``imgclf tune``: a study that resumes after a kill, two workers on one storage, pruning, bad search spaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_FASTNET, make_class_folder

import imgclf
from imgclf.errors import ImgclfError

FIXED = ["--model", "fastnet", "--model-arg", "widths=[8,16,16]", "--model-arg", "depth=1", "--batch-size", "16",
         "--label-smoothing", "0", "--precision", "fp32", "--workers", "1", "--val-fraction", "0.3"]
ENV = {**os.environ, "COLUMNS": "200"}


def tune_command(data: Path, out: Path, space: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgclf", "tune", str(data), "--out", str(out), "--space", str(space), *FIXED, *extra]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def summary(out: Path) -> dict:
    return json.loads((out / "tune.json").read_text(encoding="utf-8"))


def test_a_killed_study_resumes_to_three_trials_and_its_best_config_trains(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    space = write_space(tmp_path / "space.yaml", {"lr": {"low": 0.2, "high": 1.0, "log": True},
                                                  "augment": {"choices": ["none", "light"]}})
    out = tmp_path / "tune"
    command = tune_command(data, out, space, "--trials", "3", "--epochs", "2")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 60
    while not (out / "best.yaml").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # no clean-up at all: the trial it was running stays "running" in study.db
    first.wait(timeout=30)
    assert summary(out)["counts"]["complete"] >= 1

    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    counts = summary(out)["counts"]
    assert counts["complete"] == 3 and counts["running"] == 0
    shown = resumed.stdout + resumed.stderr
    assert "study tune (val_accuracy)" in shown and "best: trial" in shown  # the leaderboard and the best line
    html = (out / "tune.html").read_text(encoding="utf-8")
    assert "Optimisation history" in html and "data:image/png;base64" in html

    best = yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))
    assert best["lr"] == summary(out)["best"]["params"]["lr"] and best["out"] is None
    rerun = subprocess.run([sys.executable, "-m", "imgclf", "train", "--config", str(out / "best.yaml"),
                            "--out", str(tmp_path / "again")], capture_output=True, text=True, env=ENV, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "again" / "model").is_dir()
    predicted = subprocess.run([sys.executable, "-m", "imgclf", "predict", str(out / "best"),
                                str(data / "red" / "000.png")], capture_output=True, text=True, env=ENV, timeout=60)
    assert predicted.returncode == 0, predicted.stderr


def test_two_workers_share_one_study_through_a_journal_storage(tmp_path: Path) -> None:
    import optuna

    data = make_class_folder(tmp_path / "data", per_class=10)
    space = write_space(tmp_path / "space.yaml", {"lr": {"low": 0.2, "high": 1.0, "log": True}})
    journal = tmp_path / "shared" / "study.log"
    shared = ["--trials", "4", "--epochs", "1", "--storage", f"journal:{journal}", "--study-name", "colours"]
    workers = [subprocess.Popen(tune_command(data, tmp_path / f"worker{k}", space, *shared), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=ENV) for k in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=150)
        assert worker.returncode == 0, stderr

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="colours", storage=storage)
    numbers = [trial.number for trial in study.trials if trial.state.name == "COMPLETE"]
    assert sorted(numbers) == [0, 1, 2, 3]
    ran = sorted(path.name for k in range(2) for path in (tmp_path / f"worker{k}" / "trials").iterdir())
    assert ran == ["000", "001", "002", "003"]  # every trial trained once, by one of the two


def test_the_median_pruner_stops_a_trial_that_cannot_learn(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "tune"
    learns = write_space(tmp_path / "learns.yaml", {"lr": {"low": 0.4, "high": 0.5}})
    hopeless = write_space(tmp_path / "hopeless.yaml", {"lr": {"low": 1e-8, "high": 1e-7}})
    options = dict(TINY_FASTNET, lr=None, epochs=5, val_fraction=0.3, ema=False)
    imgclf.tune(data, out=out, trials=1, space=learns, startup_trials=1, **options)
    result = imgclf.tune(data, out=out, trials=2, space=hopeless, startup_trials=1, **options)

    states = {row["trial"]: row["state"] for row in result.trials}
    assert states == {0: "COMPLETE", 1: "PRUNED"}
    assert not (out / "trials" / "001" / "model").exists()  # stopped before a bundle was written
    assert (out / "trials" / "000" / "model").is_dir() and result.best["trial"] == 0
    assert "pruned" in (out / "tune.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("space, expected", [
    ({"learning_rate": {"low": 0.1, "high": 1.0}}, "unknown option(s) learning_rate"),
    ({"lr": {"low": 1.0, "high": 0.1}}, "lr: low 1.0 must be below high 0.1"),
    ({"lr": {"low": "small", "high": 1.0}}, "lr: option lr: expected float"),
    ({"augment": {"low": 0, "high": 1}}, "augment: a str option takes choices"),
    ({"augment": {"choices": ["light", "wild"]}}, "--augment 'wild' is not one of"),
    ({"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low above 0"),
])
def test_a_bad_search_space_is_refused_before_any_data_is_read(tmp_path: Path, space: dict, expected: str) -> None:
    path = write_space(tmp_path / "space.yaml", space)
    with pytest.raises(ImgclfError, match="space.yaml: ") as error:
        imgclf.tune(tmp_path / "missing-data", out=tmp_path / "tune", trials=1, space=path)
    assert expected in str(error.value)


def test_the_cli_prints_a_bad_space_as_one_line(tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", {"lr": {"low": 1.0, "high": 0.1}, "epochs": {"choices": [1]}})
    done = subprocess.run([sys.executable, "-m", "imgclf", "tune", str(tmp_path), "--trials", "2", "--space", str(path),
                           "--epochs", "3"], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "epochs also given on the command line" in lines[0]


@pytest.mark.parametrize("model, pretrained, searched", [
    ("fastnet", False, {"lr", "weight_decay", "l1", "mixup", "cutmix", "epochs", "augment", "label_smoothing"}),
    ("resnet18", True, {"lr", "weight_decay", "dropout", "augment", "label_smoothing"}),
    ("tutorial-cnn", False, {"lr", "weight_decay", "dropout", "epochs", "l1", "mixup", "cutmix"}),
])
def test_the_default_space_follows_the_recipe_and_passes_its_own_checks(model: str, pretrained: bool,
                                                                       searched: set[str]) -> None:
    from imgclf.config import make_config
    from imgclf.recipes import DataFacts, resolve
    from imgclf.workflows.tune_space import check_space, default_space

    resolved = resolve(make_config(data="x", model=model, pretrained=pretrained), DataFacts(2000, 128),
                       lambda name: "weights" if pretrained else None)
    space = default_space(resolved, given={"mixup"})
    assert searched - {"mixup"} <= set(space) and "mixup" not in space  # an option given on the command line stays fixed
    check_space(space, "default space", set())
    low, high = space["lr"]["low"], space["lr"]["high"]
    assert low < resolved.lr < high  # centred on the recipe's own rate (fastnet's scales with the batch)


def test_a_fixed_config_may_not_set_a_trial_time_budget(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("model: fastnet\ntime_budget: 5m\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "imgclf", "tune", str(tmp_path), "--trials", "2", "--config",
                           str(fixed)], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "fixed.yaml: time_budget would be each trial's" in lines[0]
