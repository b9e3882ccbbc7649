"""``imgclf tune``: a study that resumes after a kill, two workers on one storage, pruning, bad search spaces,
and default spaces that search only what each recipe reads."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from conftest import TINY_FASTNET, make_class_folder, run_cli
from processes import start_python, stop, wait_until

import imgclf
from imgclf.config import TrainConfig, make_config
from imgclf.engines.planner import LITE0
from imgclf.errors import ImgclfError
from imgclf.recipes import DataFacts, resolve
from imgclf.workflows.tune_space import (
    check_space,
    default_space,
    ignored_options,
    planned_options,
)

FIXED = ["--model", "fastnet", "--model-arg", "widths=[8,16,16]", "--model-arg", "depth=1", "--batch-size", "16",
         "--label-smoothing", "0", "--precision", "fp32", "--workers", "1", "--val-fraction", "0.3"]
def tune_command(data: Path, out: Path, space: Path, *extra: str) -> list[str]:
    """``python`` arguments for ``imgclf tune`` in a process of its own."""
    return ["-m", "imgclf", "tune", str(data), "--out", str(out), "--space", str(space), *FIXED, *extra]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def summary(out: Path) -> dict:
    return json.loads((out / "tune.json").read_text(encoding="utf-8"))


@pytest.mark.subprocess
def test_a_killed_study_resumes_to_three_trials_and_its_best_config_trains(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    space = write_space(tmp_path / "space.yaml", {"lr": {"low": 0.2, "high": 1.0, "log": True},
                                                  "augment": {"choices": ["none", "light"]}})
    out = tmp_path / "tune"
    command = tune_command(data, out, space, "--trials", "3", "--epochs", "2")
    first = start_python(*command)
    # tune.json is the last file a finished trial writes (best.yaml, best/, tune.json, tune.html)
    wait_until((out / "tune.json").exists, first, "the study's first trial", timeout_s=60)
    stop(first, signal.SIGKILL, timeout_s=30)  # no clean-up at all: the trial it was running stays "running" in study.db
    assert summary(out)["counts"]["complete"] >= 1

    resumed = run_cli(*command[2:])  # the kill needs a process of its own; the resume does not
    assert resumed.returncode == 0, resumed.stderr
    counts = summary(out)["counts"]
    assert counts["complete"] == 3 and counts["running"] == 0
    shown = resumed.stdout + resumed.stderr
    assert "study tune (val_accuracy)" in shown and "best: trial" in shown  # the leaderboard and the best line
    html = (out / "tune.html").read_text(encoding="utf-8")
    assert "Optimisation history" in html and "data:image/png;base64" in html

    best = yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))
    assert best["lr"] == summary(out)["best"]["params"]["lr"] and best["out"] is None
    rerun = run_cli("train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"))
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "again" / "model").is_dir()
    predicted = run_cli("predict", str(out / "best"), str(data / "red" / "000.png"))
    assert predicted.returncode == 0, predicted.stderr


@pytest.mark.subprocess
def test_two_workers_share_one_study_through_a_journal_storage(tmp_path: Path) -> None:
    import optuna

    data = make_class_folder(tmp_path / "data", per_class=10)
    space = write_space(tmp_path / "space.yaml", {"lr": {"low": 0.2, "high": 1.0, "log": True}})
    journal = tmp_path / "shared" / "study.log"
    shared = ["--trials", "4", "--epochs", "1", "--storage", f"journal:{journal}", "--study-name", "colours"]
    workers = [start_python(*tune_command(data, tmp_path / f"worker{k}", space, *shared)) for k in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=150)
        assert worker.returncode == 0, stderr

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="colours", storage=storage)
    numbers = [trial.number for trial in study.trials if trial.state.name == "COMPLETE"]
    assert sorted(numbers) == [0, 1, 2, 3]
    ran = sorted(path.name for k in range(2) for path in (tmp_path / f"worker{k}" / "trials").iterdir())
    assert ran == ["000", "001", "002", "003"]  # every trial trained once, by one of the two


@pytest.mark.slow
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
    done = run_cli("tune", str(tmp_path), "--trials", "2", "--space", str(path), "--epochs", "3")
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "epochs also given on the command line" in lines[0]


TRAINING_RECIPES = {  # the families whose runs take gradient steps, each as a user would ask for it
    "fastnet": dict(model="fastnet"),
    "tutorial-cnn": dict(model="tutorial-cnn"),
    "timm from scratch": dict(model="resnet18", pretrained=False),
    "two-stage": dict(model="resnet18", pretrained=True, strategy="two-stage"),
    "finetune": dict(model="resnet18", pretrained=True, strategy="finetune"),
    "probe by gradient descent": dict(model="resnet18", pretrained=True, strategy="probe", linear_probe=False),
    "keras two-stage": dict(model="resnet18", pretrained=True, backend="tensorflow"),
    "tail": dict(model=LITE0, pretrained=True, strategy="tail"),
}


def resolved_recipe(**options: object) -> TrainConfig:
    pretrained = bool(options.get("pretrained"))
    return resolve(make_config(data="x", **options), DataFacts(2000, 128),
                   lambda name: "weights" if pretrained else None)


def extremes(entry: dict) -> tuple[object, object]:
    return (entry["choices"][0], entry["choices"][-1]) if "choices" in entry else (entry["low"], entry["high"])


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_every_default_entry_of_a_training_recipe_reaches_the_engine(recipe: str) -> None:
    options = TRAINING_RECIPES[recipe]
    resolved = resolved_recipe(**options)
    space = default_space(resolved, given=set())
    check_space(space, "default space", set())
    assert "lr" in space and space["lr"]["low"] < resolved.lr < space["lr"]["high"]  # around the recipe's own rate
    assert not set(space) & set(ignored_options(resolved))
    for name, entry in space.items():
        low, high = extremes(entry)
        assert resolved_recipe(**options, **{name: low}) != resolved_recipe(**options, **{name: high}), name
    assert "mixup" not in default_space(resolved, given={"mixup"})  # an option given on the command line stays fixed


def test_the_probe_alone_searches_its_c_views_and_class_weights() -> None:
    resolved = resolved_recipe(model="resnet18", pretrained=True)
    assert resolved.strategy == "probe"
    space = default_space(resolved, given=set())
    assert set(space) == {"probe_c", "tta"}  # nothing else changes the fit
    assert space["probe_c"]["low"] < 0.03 < space["probe_c"]["high"]  # around what cross-validation picks
    assert "class_weights" in default_space(resolved, given=set(), imbalanced=True)
    check_space(default_space(resolved, given=set(), imbalanced=True), "default space", set())


def test_the_tail_searches_neither_augmentation_nor_dropout_and_the_planners_choice_holds_in_every_trial() -> None:
    tail = resolved_recipe(model=LITE0, pretrained=True, strategy="tail")
    assert {"augment", "dropout"}.isdisjoint(default_space(tail, given=set()))
    assert "augment" in ignored_options(tail) and "tail_blocks" in ignored_options(resolved_recipe(model="fastnet"))
    # the planner's choice is made once, for every trial: timed again per trial, load could change the recipe,
    # and a named trunk without it would be probed alone
    planned = planned_options(make_config(data="x"), tail, given={"tta"})
    assert planned == {"model": LITE0, "image_size": tail.image_size, "strategy": "tail", "tail_blocks": 1,
                       "tta_zoom": tail.tta_zoom}  # the views too: no zoom unless the planner or the user chose one
    assert planned_options(make_config(data="x", model="resnet18"), tail, given={"model"}) == {}


PROBE = ["--model", "test_resnet", "--image-size", "32", "--workers", "1", "--precision", "fp32",
         "--val-fraction", "0.3"]


def store_files() -> dict[str, tuple[int, int]]:
    from imgclf.paths import cache_dir

    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in (cache_dir() / "embeddings").rglob("*") if path.is_file()}


def probe_head(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "model" / "weights.safetensors"))


@pytest.mark.slow
def test_probe_trials_differ_in_c_and_later_ones_reuse_the_cached_embeddings(tmp_path: Path,
                                                                             backbone_weights: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "tune"
    fixed = dict(model="test_resnet", weights=str(backbone_weights), image_size=32, workers=1, precision="fp32",
                 val_fraction=0.3, tta=True)  # the views fixed: every trial needs the same embeddings
    imgclf.tune(data, out=out, trials=1, **fixed)
    embedded = store_files()
    result = imgclf.tune(data, out=out, trials=2, **fixed)
    assert store_files() == embedded and embedded  # the second trial wrote nothing to the embedding store

    runs = {row["trial"]: Path(row["run"]) for row in result.trials}
    drawn = [yaml.safe_load((runs[k] / "config.yaml").read_text(encoding="utf-8"))["probe_c"] for k in (0, 1)]
    assert drawn == [row["params"]["probe_c"] for row in sorted(result.trials, key=lambda row: row["trial"])]
    assert drawn[0] != drawn[1]
    metrics = [json.loads((runs[k] / "model" / "model.json").read_text(encoding="utf-8"))["metrics"] for k in (0, 1)]
    assert metrics[0]["val_loss"] != metrics[1]["val_loss"]  # another C, another model

    # what the old default space searched changes nothing in this recipe: the same C gives the very same model
    changed = dict(lr=0.5, weight_decay=0.3, momentum=0.5, optimizer="sgd", muon_lr=0.1, schedule="constant",
                   warmup_epochs=2.0, bias_lr_scale=5.0, grad_clip=0.1, label_smoothing=0.3, l1=0.01, dropout=0.4,
                   drop_path=0.2, ema=True, ema_decay=0.5, lookahead=True, augment="strong", mixup=0.4, cutmix=1.0,
                   epochs=3.0, batch_size=4, balanced_sampling=True, early_stopping=1, backbone_lr_scale=0.5,
                   probe_epochs=1.0, whitening_bias_epochs=1.0)
    assert set(changed) == set(ignored_options(result_config(runs[0])))
    again = imgclf.train(data, out=tmp_path / "again", probe_c=drawn[0], **fixed, **changed)
    assert again.metrics["val_loss"] == metrics[0]["val_loss"]
    first, other = probe_head(runs[0]), probe_head(tmp_path / "again")
    assert first.keys() == other.keys() and all((first[name] == other[name]).all() for name in first)


def result_config(run: Path) -> TrainConfig:
    return make_config(**yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")))


def test_a_space_entry_the_recipe_ignores_is_refused_in_one_line(tmp_path: Path, backbone_weights: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=4)
    space = write_space(tmp_path / "space.yaml", {"probe_c": {"low": 0.01, "high": 1.0, "log": True},
                                                  "lr": {"low": 0.001, "high": 0.1, "log": True}})
    done = run_cli("tune", str(data), "--trials", "2", "--space", str(space), "--out", str(tmp_path / "tune"),
                   "--weights", str(backbone_weights), *PROBE)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "space.yaml: lr changes nothing in this recipe" in lines[-1], lines
    assert not (tmp_path / "tune" / "trials").exists()


def test_a_fixed_config_may_not_set_a_trial_time_budget(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("model: fastnet\ntime_budget: 5m\n", encoding="utf-8")
    done = run_cli("tune", str(tmp_path), "--trials", "2", "--config", str(fixed))
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "fixed.yaml: time_budget would be each trial's" in lines[0]
