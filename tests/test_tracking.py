"""--track mlflow: a training run's params, per-epoch metrics, artifacts and registered pyfunc model; tune's parent and
child runs; evaluate; and the one-line message without MLflow. Against a local SQLite store: no network."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FASTNET, make_class_folder

import imgclf
from imgclf.errors import ImgclfError

# MLflow's own advice (type hints for its schema inference) and its SQLAlchemy store's deprecation, nothing of ours
pytestmark = [pytest.mark.filterwarnings("ignore:.*Add type hints:UserWarning"),
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow's own convention: MLFLOW_TRACKING_URI names the store (artifacts beside it, from the working folder)."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return tmp_path


def _artifacts(client, run_id: str, folder: str = "") -> set[str]:  # noqa: ANN001
    found = set()
    for item in client.list_artifacts(run_id, folder or None):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_a_tracked_run_logs_params_metrics_artifacts_and_a_registered_model(store: Path) -> None:
    import mlflow
    import pandas as pd

    data = make_class_folder(store / "data", per_class=12)
    result = imgclf.train(data, out=store / "shop", epochs=2, track="mlflow", **TINY_FASTNET)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert run.data.params["lr"] == "0.5" and run.data.params["model"] == "fastnet"
    assert run.data.params["epochs"] == str(result.config.epochs)  # the resolved config
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [point.step for point in history] == [1, 2]
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    artifacts = _artifacts(client, run.info.run_id)
    assert {"run/report.html", "run/config.yaml", "model/model.json", "model/weights.safetensors",
            "model/MODEL_CARD.md"} <= artifacts
    assert client.get_model_version("imgclf-shop", "1").run_id == run.info.run_id
    model = mlflow.pyfunc.load_model("models:/imgclf-shop/1")
    paths = sorted(str(path) for path in data.rglob("*.png"))[::5]
    answer = model.predict(pd.DataFrame({"path": paths + [str(store / "missing.png")]}))
    expected = imgclf.load(result.run_dir).predict_proba(paths)
    np.testing.assert_allclose(answer[["blue", "green", "red"]].to_numpy()[:-1], expected, atol=1e-6)
    assert list(answer["prediction"][:-1]) == [["blue", "green", "red"][i] for i in expected.argmax(axis=1)]
    assert answer["error"].iloc[-1] == "file not found"
    images = pd.DataFrame({"image": [__import__("base64").b64encode(Path(paths[0]).read_bytes()).decode()]})
    np.testing.assert_allclose(model.predict(images)[["blue", "green", "red"]].to_numpy()[0], expected[0], atol=1e-6)


@pytest.mark.slow
def test_tune_is_a_parent_run_with_a_child_per_trial_and_evaluate_is_tracked(store: Path) -> None:
    import mlflow

    data = make_class_folder(store / "data", per_class=12)
    imgclf.tune(data, out=store / "tune", trials=2, track="mlflow", epochs=1, startup_trials=5, **TINY_FASTNET)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("imgclf").experiment_id
    runs = client.search_runs([experiment])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert all(client.get_metric_history(child.info.run_id, "val_accuracy") for child in children)
    assert "best_val_accuracy" in parents[0].data.metrics and client.search_model_versions("name='imgclf-tune'")
    evaluation = imgclf.evaluate(store / "tune" / "best", data, out=store / "eval", track="mlflow")
    (tracked,) = [run for run in client.search_runs([experiment]) if run.data.tags.get("command") == "evaluate"]
    assert tracked.data.metrics["accuracy"] == pytest.approx(evaluation.metrics["accuracy"])
    assert "eval/metrics.json" in _artifacts(client, tracked.info.run_id)


def test_without_mlflow_the_message_names_what_to_install(class_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    for call in (lambda: imgclf.train(class_folder, epochs=1, track="mlflow", **TINY_FASTNET),
                 lambda: imgclf.evaluate("nowhere", track="mlflow")):
        with pytest.raises(ImgclfError) as caught:
            call()
        assert str(caught.value) == "--track mlflow needs MLflow, an optional extra: pip install 'imgclf[track]'"
    with pytest.raises(ImgclfError, match="--track 'wandb' is not one of mlflow"):
        imgclf.train(class_folder, epochs=1, track="wandb")
