"""The TensorFlow backend run as a user runs it: train, evaluate, predict, resume and compare, on tiny images."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import interrupt_training, run_cli, run_process
from processes import run_python

pytestmark = pytest.mark.tensorflow  # skipped where the TensorFlow extra is missing (conftest.py)

TINY = ["--backend", "tensorflow", "--image-size", "16", "--batch-size", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def keras_run(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One tutorial-cnn run on the TensorFlow backend, shared by the tests that read it."""
    run = tmp_path_factory.mktemp("keras") / "run"
    result = run_cli("train", str(colours), "--out", str(run), "--epochs", "2", *TINY)
    assert result.returncode == 0, result.stderr
    return run, result


def test_train_writes_the_same_run_directory_and_a_keras_bundle(keras_run: tuple[Path, subprocess.CompletedProcess[str]]
                                                                ) -> None:
    run, result = keras_run
    assert "tensorflow cpu fp32" in result.stderr and "epoch 2 (train)" in result.stderr
    assert "test accuracy" in result.stderr and "Traceback" not in result.stderr
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2"] and all(row["val_accuracy"] for row in rows)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["backend"] == "tensorflow" and info["architecture"] == "tutorial-cnn"
    assert info["classes"] == ["blue", "green", "red"] and info["metrics"]["parameters"] > 0
    assert (run / "model" / "model.keras").is_file() and not (run / "model" / "weights.safetensors").exists()
    assert (run / "keras_log.csv").read_text().startswith("epoch,")  # CSVLogger
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))  # TensorBoard
    assert (run / "checkpoints" / "keras_state.json").is_file() and list((run / "checkpoints").glob("epoch-*.keras"))
    assert (run / "report.html").is_file()


@pytest.mark.subprocess
def test_bundle_gives_the_trained_model_s_results_in_a_fresh_process(
        keras_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, _ = keras_run
    trained = json.loads((run / "model" / "model.json").read_text())["metrics"]
    result = run_process("evaluate", str(run), "--json", "--out", str(run / "fresh-evaluation"))
    assert result.returncode == 0, result.stderr
    fresh = json.loads(result.stdout)
    assert fresh["images"] == trained["test_images"]
    assert fresh["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)
    assert fresh["log_loss"] == pytest.approx(trained["test_loss"], abs=1e-4)


@pytest.mark.subprocess
def test_predict_streams_rows_from_a_keras_bundle_identically_across_processes(
        keras_run: tuple[Path, subprocess.CompletedProcess[str]], colours: Path) -> None:
    run, _ = keras_run
    first = run_process("predict", str(run), str(colours), "--format", "jsonl", "--top-k", "3")
    second = run_cli("predict", str(run), str(colours), "--format", "jsonl", "--top-k", "3")
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(rows) == 60 and all(len(row["top_k"]) == 3 for row in rows)
    assert first.stdout == second.stdout
    correct = sum(row["prediction"] == Path(row["path"]).parent.name for row in rows)
    assert correct >= 50  # the colours are easy: the trained model must have learnt them


@pytest.mark.subprocess
def test_resume_continues_an_interrupted_tensorflow_run(colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, stderr = interrupt_training([str(colours), "--epochs", "400", *TINY], run,
                                      ready=run / "checkpoints" / "keras_state.json", wait_s=120)
    assert code == 130, stderr
    assert f"imgclf train --resume {run}" in stderr
    # the commit point is keras_state.json: Ctrl-C may land after an epoch's metrics row, before its checkpoint
    state = json.loads((run / "checkpoints" / "keras_state.json").read_text())
    done = int(state["checkpoint"].removeprefix("epoch-").removesuffix(".keras"))
    assert 1 <= done < 400 and done <= len(list(csv.DictReader(open(run / "metrics.csv"))))
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 400.0", f"epochs: {done + 1}.0"))  # finish soon
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at epoch {done + 1}" in resumed.stderr
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(run / "metrics.csv"))]
    assert epochs == list(range(1, done + 2))
    assert (run / "model" / "model.keras").is_file()


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV3Small backbone's (random) weights as a --weights file, shared by the transfer tests."""
    from imgclf.models.keras_models import build_model

    weights = tmp_path_factory.mktemp("mobilenet") / "backbone.weights.h5"
    build_model("mobilenetv3_small_100", 3, 32, 3, {}, None).get_layer("backbone").save_weights(weights)
    return weights


def test_two_stage_transfer_from_a_weights_file(colours: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    """A keras.applications backbone from --weights: a probe with the backbone frozen, then fine-tuning."""
    run = tmp_path / "run"
    result = run_cli("train", str(colours), "--out", str(run), "--model", "MobileNetV3Small", "--weights",
                     str(mobilenet_weights), "--epochs", "2", *TINY[:2], "--image-size", "32",
                     "--batch-size", "8", "--workers", "1", "--augment", "none")
    assert result.returncode == 0, result.stderr
    assert "two-stage" in result.stderr and "pretrained weights:" in result.stderr
    stages = [row["stage"] for row in csv.DictReader(open(run / "metrics.csv"))]
    assert stages == ["probe", "finetune"]
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["architecture"] == "mobilenetv3_small_100" and info["config"]["strategy"] == "two-stage"
    predicted = run_cli("predict", str(run), str(colours / "red" / "000.png"), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr  # the saved model (our preprocessing layer) loads safely


def test_probe_trains_the_head_only(colours: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    import imgclf
    from imgclf.models.keras_models import build_model

    start = build_model("mobilenetv3_small_100", 3, 32, 3, {}, None).get_layer("backbone")
    start.load_weights(mobilenet_weights)
    run = imgclf.train(colours, out=tmp_path / "run", backend="tensorflow", model="mobilenetv3_small_100",
                       weights=str(mobilenet_weights), strategy="probe", epochs=1, image_size=32, batch_size=8, workers=1,
                       augment="none")
    shipped = imgclf.load(run.run_dir).runtime.model
    for before, after in zip(start.get_weights(), shipped.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(before, after)
    assert np.abs(shipped.get_layer("classifier").get_weights()[0]).sum() > 0  # the zero-initialised head learnt


def test_compare_trains_both_backends_and_writes_the_report(colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    result = run_cli("compare", str(colours), "--epochs", "2", "--image-size", "16", "--batch-size", "8",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "inference images/s" in result.stderr and str(out / "comparison.html") in result.stderr
    report = json.loads((out / "comparison.json").read_text())
    assert report["parameters_match"] and report["same_split"]
    backends = [entry["backend"] for entry in report["results"]]
    assert backends == ["torch", "tensorflow"]
    for entry in report["results"]:
        assert len(entry["history"]) == 2 and entry["seconds_per_epoch"] > 0
        assert entry["inference_images_per_second"] > 0 and 0 <= entry["metrics"]["test_accuracy"] <= 1
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "comparison.html").read_text()
    assert "data:image/png;base64," in page and "Parameter counts match" in page
    assert yaml.safe_load((out / "torch" / "config.yaml").read_text())["precision"] == "fp32"


@pytest.mark.parametrize("classes, size, expected", [(5, 180, 3_989_285), (10, 32, 156_074), (3, 16, 56_867)])
def test_tutorial_cnn_has_the_same_parameter_count_on_both_backends(classes: int, size: int, expected: int) -> None:
    from imgclf.models import create_model
    from imgclf.models.keras_models import build_model, count_parameters

    torch_count = sum(parameter.numel() for parameter in create_model("tutorial-cnn", classes, image_size=size).parameters())
    keras_count = count_parameters(build_model("tutorial-cnn", classes, size, 3, {}, None))
    assert torch_count == keras_count == expected


@pytest.mark.parametrize("schedule, warmup", [("onecycle", 3), ("cosine", 2), ("constant", 4), ("cosine", 0)])
def test_keras_learning_rate_schedule_is_the_torch_engine_s(schedule: str, warmup: int) -> None:
    from imgclf.engines.keras_engine import StageSchedule, keras
    from imgclf.engines.optim import lr_factor

    total = 20
    keras_rates = [float(keras.ops.convert_to_numpy(StageSchedule(0.5, total, warmup, schedule)(step)))
                   for step in range(total)]
    torch_rates = [0.5 * lr_factor(step, total, warmup, schedule) for step in range(total)]
    np.testing.assert_allclose(keras_rates, torch_rates, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("args, message", [
    (["--model", "fastnet"], "--model fastnet is not available with --backend tensorflow; choose one of tutorial-cnn"),
    (["--time-budget", "1m"], "--backend tensorflow does not support --time-budget"),
    (["--mixup", "0.2"], "--backend tensorflow does not support --mixup"),
    (["--backend", "jax"], "--backend 'jax' is not one of torch, tensorflow"),
])
def test_unsupported_tensorflow_options_get_one_line_errors(args: list[str], message: str, colours: Path,
                                                            tmp_path: Path) -> None:
    result = run_cli("train", str(colours), "--out", str(tmp_path / "run"), "--backend", "tensorflow", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.subprocess
def test_missing_tensorflow_extra_names_the_install_command(colours: Path, tmp_path: Path) -> None:
    """As on a machine without the extra: the import machinery finds no tensorflow."""
    script = ("import importlib.util as u, sys; real = u.find_spec; "
              "u.find_spec = lambda name, *a: None if name in ('tensorflow', 'keras') else real(name, *a); "
              "from imgclf.cli import main; sys.argv = ['imgclf'] + sys.argv[1:]; main()")
    for command in (["train", str(colours), "--backend", "tensorflow", "--out", str(tmp_path / "run")],
                    ["compare", str(colours), "--out", str(tmp_path / "compare")]):
        result = run_python("-c", script, *command, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "pip install 'imgclf[tensorflow]'" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_pretrained_backbone_offline_or_missing_file_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    from keras.src.utils import file_utils

    from imgclf.errors import ImgclfError
    from imgclf.models.keras_models import build_model

    def offline(*args: object, **kwargs: object) -> None:
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ImgclfError, match=r"could not get Keras's ImageNet weights for MobileNetV2 .*pass --weights FILE"):
        build_model("mobilenetv2_100", 3, 32, 3, {}, "imagenet")
    with pytest.raises(ImgclfError, match=r"--weights .*missing.h5: no such file"):
        build_model("resnet50", 3, 32, 3, {}, str(tmp_path / "missing.h5"))


@pytest.mark.subprocess
@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["compare", "--help"]])
def test_cli_starts_without_importing_torch_or_tensorflow(command: list[str]) -> None:
    script = ("import atexit, sys; atexit.register(lambda: print(sorted({'torch', 'tensorflow', 'keras'} "
              "& set(sys.modules)))); from imgclf.cli import main; sys.argv = ['imgclf'] + sys.argv[1:]; main()")
    result = run_python("-c", script, *command, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_python_api_compare_stays_callable_after_its_module_loads() -> None:
    import imgclf
    import imgclf.workflows.comparison  # noqa: F401  (a submodule named like the function would replace it)

    assert callable(imgclf.compare)
