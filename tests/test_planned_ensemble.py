"""--ensemble (and the planner's ensemble plans): tail members trained in one run, combined into one bundle."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, run_cli, save_pretend_weights

import imgclf
from imgclf.engines.planner import LITE0, PLANS, EnsemblePlan, PhotoPlan, choose_plan, plan_seconds
from imgclf.errors import ImgclfError
from imgclf.runs import MARKER, RunDirectory
from imgclf.training import TrainResult

MODEL = "test_efficientnet"  # timm's tiny EfficientNet: five blocks, the layout the tail is cut from
MEMBERS = f"{MODEL}@32,{MODEL}@40"
OPTIONS = dict(workers=1, precision="fp32", batch_size=8, epochs=3)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, TrainResult]:
    root = tmp_path_factory.mktemp("planned")
    weights = save_pretend_weights(MODEL, root / "weights.safetensors")
    data = make_class_folder(root / "data", per_class=12, size=48)
    result = imgclf.train(data, out=root / "run", ensemble=MEMBERS, weights=str(weights), **OPTIONS)
    assert isinstance(result, TrainResult)
    return root, data, weights, result


@pytest.mark.slow
def test_the_members_train_on_one_split_and_make_one_bundle_every_command_takes(
        ensemble_run: tuple[Path, Path, Path, TrainResult], tmp_path: Path) -> None:
    root, data, _, result = ensemble_run
    run = root / "run"
    members = sorted(path.name for path in (run / "runs").iterdir())
    assert members == ["0-test_efficientnet-32", "1-test_efficientnet-40"]
    split = (run / "split.csv").read_text()
    for member in members:
        config = RunDirectory(run / "runs" / member).read_config()
        assert config.strategy == "tail" and config.ensemble is None
        assert sorted((run / "runs" / member / "split.csv").read_text().splitlines()) == sorted(split.splitlines())
    bundle = json.loads((run / "model" / "model.json").read_text())
    assert bundle["kind"] == "ensemble" and [m["image_size"] for m in bundle["members"]] == [32, 40]
    assert [member["name"] for member in bundle["members"]] == members  # named as their run folders
    summary = json.loads((run / "ensemble.json").read_text())
    assert result.metrics["val_accuracy"] == summary["scores"]["ensemble"]["val"]["accuracy"]
    assert summary["weighting"] == "equal" and summary["fitted_cross_fitted_val_log_loss"] is None  # under 10 val images
    assert (run / "report.html").is_file() and (run / "model" / "MODEL_CARD.md").is_file()
    images = sorted(data.rglob("*.png"))[::5]
    probabilities = imgclf.load(run).predict_proba(images)
    assert probabilities.shape == (len(images), 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    evaluation = imgclf.evaluate(run, out=tmp_path / "eval")
    assert evaluation.metrics["accuracy"] == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
    assert imgclf.export(run, "onnx").parity.top1_agreement == 1.0
    from fastapi.testclient import TestClient

    from imgclf.serve.app import create_app

    ensemble = imgclf.load(run)
    with TestClient(create_app(ensemble, "planned", "auto")) as client:
        answer = client.post("/v1/predict", content=images[0].read_bytes(), headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"][0]["prediction"]
    assert served == ensemble.classes[int(probabilities[0].argmax())]


@pytest.mark.slow
def test_a_resumed_ensemble_keeps_finished_members_and_trains_the_rest(
        ensemble_run: tuple[Path, Path, Path, TrainResult], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, _, _, _ = ensemble_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    for folder in (run / "model", run / "runs" / "1-test_efficientnet-40"):  # as if stopped during member 2
        shutil.rmtree(folder)
    (run / "ensemble.json").unlink()
    (run / "runs" / "1-test_efficientnet-40").mkdir()  # ... just after its folder was made, with nothing in it
    (run / "runs" / "1-test_efficientnet-40" / MARKER).write_text("an imgclf run\n")
    first = (run / "runs" / "0-test_efficientnet-32" / "model" / "weights.safetensors").read_bytes()
    caplog.set_level(logging.INFO, logger="imgclf")
    resumed = imgclf.train(resume=run)
    assert isinstance(resumed, TrainResult) and resumed.model_dir == run / "model"
    assert "member 1 of 2" in caplog.text and "is trained; kept" in caplog.text
    assert "member 2 of 2: test_efficientnet at 40px" in caplog.text
    assert (run / "runs" / "0-test_efficientnet-32" / "model" / "weights.safetensors").read_bytes() == first
    assert json.loads((run / "model" / "model.json").read_text())["kind"] == "ensemble"


@pytest.mark.slow
def test_the_cli_prints_each_members_scores_beside_the_ensembles(ensemble_run: tuple[Path, Path, Path, TrainResult],
                                                                  tmp_path: Path) -> None:
    _, data, weights, _ = ensemble_run
    result = run_cli("train", str(data), "--out", str(tmp_path / "run"), "--ensemble", MEMBERS, "--weights",
                     str(weights), "--workers", "1", "--precision", "fp32", "--batch-size", "8", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "over the best member" in said and "0-test_efficientnet-32" in said and "1-test_efficientnet-40" in said
    assert "trained in" in said and "Traceback" not in said


@pytest.mark.parametrize(("options", "message"), [
    (dict(ensemble="test_efficientnet"), "--ensemble 'test_efficientnet' should be MODEL@SIZE"),
    (dict(ensemble="test_efficientnet@32"), "--ensemble needs two or more MODEL@SIZE members, got 1"),
    (dict(ensemble=MEMBERS, model=MODEL), "give --ensemble or --model, not both"),
    (dict(ensemble=MEMBERS, strategy="probe"), "drop --strategy probe"),
    (dict(ensemble=MEMBERS, image_size=64), "give --ensemble or --image-size, not both"),
    (dict(ensemble=MEMBERS, val_fraction=0.0), "weighs its members on the validation split, which has 0"),
    (dict(ensemble=f"{LITE0}@224,resnet1@32", weights=None), "unknown model 'resnet1'"),
    (dict(ensemble=f"{MODEL}@32,test_resnet@32"), "--weights is one file"),
])
def test_bad_ensembles_are_refused_before_any_member_trains(options: dict, message: str, tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=8, size=48)
    weights = save_pretend_weights(MODEL, tmp_path / "weights.safetensors")
    with pytest.raises(ImgclfError, match=message):
        imgclf.train(data, out=tmp_path / "run", **{**OPTIONS, "weights": str(weights), **options})
    assert not (tmp_path / "run" / "runs").exists()


def test_a_larger_budget_buys_a_larger_plan_from_measured_costs() -> None:
    """From pretend per-image costs: the default plan for the default budget, the ensembles for the larger ones."""
    costs = {LITE0: 0.008, "tf_efficientnet_lite1": 0.012, "tf_efficientnet_lite2": 0.02}  # s per image, like 2 cores

    def measured(trunk: str, size: int) -> float:
        return costs[trunk] * (size / 224) ** 2

    def available(trunk: str) -> bool:
        return True

    flowers = (2934, 736)
    chosen = {budget: choose_plan(*flowers, budget, measured, available) for budget in (60, 300, 1200, 3600)}
    assert chosen[300] == next(plan for plan in PLANS if isinstance(plan, PhotoPlan))  # today's default plan
    assert isinstance(chosen[3600], EnsemblePlan)
    seconds = [plan_seconds(chosen[budget], *flowers, measured) for budget in (60, 300, 1200, 3600)]
    assert seconds == sorted(seconds) and seconds[0] < seconds[-1]  # more time, a costlier plan
    ranks = [PLANS.index(chosen[budget]) for budget in (60, 300, 1200, 3600)]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]  # ... and one ranked more accurate
    assert all(plan_seconds(chosen[budget], *flowers, measured) <= 0.8 * budget for budget in (300, 1200, 3600))
    without_lite2 = choose_plan(*flowers, 3600, measured, lambda trunk: trunk != "tf_efficientnet_lite2")
    assert without_lite2 == next(plan for plan in PLANS if isinstance(plan, PhotoPlan))  # no weights: not offered


def test_quality_high_plans_an_ensemble_that_fits_its_budget_and_default_stays_one_tail(tmp_path: Path) -> None:
    """On a tiny photo set the planner needs no timing: at the slowest cost it assumes, the plan fits 20 minutes."""
    from imgclf.config import TrainConfig
    from imgclf.engines.planner import BUDGET_SHARE, PESSIMISTIC_SECONDS

    data = make_class_folder(tmp_path / "data", per_class=6, size=96)  # above 64 px: photos, the planner's
    high = imgclf.train(data, quality="high", dry_run=True)
    plain = imgclf.train(data, dry_run=True)
    assert isinstance(high, TrainConfig) and isinstance(plain, TrainConfig)
    assert high.time_budget == "20m" and high.ensemble == ",".join(
        f"{member.model}@{member.image_size}" for member in PLANS[0].members)  # type: ignore[union-attr]
    assert plain.ensemble is None and plain.strategy == "tail" and plain.model == LITE0
    slowest = plan_seconds(PLANS[0], 12, 6, lambda trunk, size: PESSIMISTIC_SECONDS)
    assert slowest <= BUDGET_SHARE * 20 * 60


def test_an_ensemble_over_several_processes_is_refused_in_one_line(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=4, size=48)
    result = run_cli("train", str(data), "--out", str(tmp_path / "run"), "--ensemble", MEMBERS, "--nproc", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "its tail members train in one process; drop --nproc" in result.stderr


def test_workflows_that_train_one_model_refuse_an_ensemble_in_one_line(tmp_path: Path) -> None:
    """tune, cross-validation and update call training directly: an ensemble there is refused, saying what to do."""
    from imgclf.config import make_config
    from imgclf.training import train

    data = make_class_folder(tmp_path / "data", per_class=8, size=48)
    weights = save_pretend_weights(MODEL, tmp_path / "weights.safetensors")
    config = make_config(data=str(data), out=str(tmp_path / "run"), ensemble=MEMBERS, weights=str(weights), **OPTIONS)
    with pytest.raises(ImgclfError, match="--ensemble makes an ensemble of several runs, which only imgclf train"):
        train(config)
