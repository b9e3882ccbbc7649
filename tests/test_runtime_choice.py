"""--runtime auto among the native runtime and the bundle's exports, int8 ones included: it follows the speeds
recorded on this machine (pretended here: tests never time) and ignores an int8 file that is stale or whose runtime
is not installed; what measures the model itself leaves int8 out."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from conftest import make_class_folder, untrained_bundle

import imgclf
from imgclf.deploy import runtime_choice
from imgclf.deploy.bundle import WEIGHTS_FILE
from imgclf.deploy.runtime import resolve_runtime
from imgclf.errors import ImgclfError

FP32_SPEEDS = {"torch": {"1": 100.0, "64": 400.0}, "onnx": {"1": 200.0, "64": 300.0}}
INT8_SPEEDS = {"onnx-int8": {"1": 150.0, "64": 800.0}}  # the fastest at 64, not at 1


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained bundle with model.onnx and model.int8.onnx (any accuracy change accepted), and its images."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("runtime-choice")
    data = make_class_folder(root / "data", per_class=4)
    bundle = untrained_bundle(root)
    imgclf.export(bundle, "onnx", quantize="int8", data=data, max_accuracy_drop=1.0)
    return bundle, data


@pytest.fixture
def bundle(exported: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the exported bundle whose recorded speeds are the pretended ones."""
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    pretend(copy, "model.onnx.json", FP32_SPEEDS)
    pretend(copy, "model.int8.onnx.json", INT8_SPEEDS)
    return copy


def pretend(bundle: Path, metadata: str, speeds: dict[str, dict[str, float]], **values: str) -> None:
    path = bundle / metadata
    meta = json.loads(path.read_text())
    meta["speed"].update(speeds)
    path.write_text(json.dumps({**meta, **values}))


def test_export_records_the_int8_speed_with_the_machine_as_for_fp32(exported: tuple[Path, Path]) -> None:
    for name, runtime in (("model.onnx.json", "onnx"), ("model.int8.onnx.json", "onnx-int8")):
        meta = json.loads((exported[0] / name).read_text())
        assert meta["measured_on"] == runtime_choice.machine()
        assert set(meta["speed"][runtime]) == {"1", "64"}


def test_auto_takes_an_int8_export_where_it_measured_fastest(bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgclf")
    assert resolve_runtime(bundle, "auto", batch_size=64) == "onnx-int8"
    assert "runtime onnx-int8: the fastest of torch, onnx, onnx-int8 measured on this machine at batch 64 " \
           "(800 images/s)" in caplog.messages  # predict and serve say which it chose
    assert resolve_runtime(bundle, "auto", batch_size=1) == "onnx"
    assert resolve_runtime(bundle, "auto", batch_size=64, allow_int8=False) == "torch"  # measuring the model itself
    assert resolve_runtime(bundle, "auto", batch_size=64, device="cuda") == "torch"
    assert imgclf.load(bundle).runtime.name == "onnx-int8"  # what predict's summary and serve's answers name
    assert imgclf.load(bundle, runtime="onnx").runtime.name == "onnx"  # a runtime named outright is kept


def test_a_stale_int8_export_is_ignored(bundle: Path, exported: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file, save_file

    weights = bundle / WEIGHTS_FILE
    save_file({name: tensor + 0.01 for name, tensor in load_file(str(weights)).items()}, str(weights))  # retrained
    imgclf.export(bundle, "onnx")  # the fp32 file again, not the int8 one: that one is the old weights'
    pretend(bundle, "model.onnx.json", FP32_SPEEDS)
    assert resolve_runtime(bundle, "auto", batch_size=64) == "torch"
    with pytest.raises(ImgclfError, match="no up-to-date model.int8.onnx; run imgclf export .* --quantize int8"):
        resolve_runtime(bundle, "onnx-int8")


def test_an_int8_export_whose_runtime_is_not_installed_is_ignored(bundle: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_runtime(bundle, "auto", batch_size=64) == "torch"


def test_on_another_machine_int8_is_measured_with_the_others_once(bundle: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("model.onnx.json", "model.int8.onnx.json"):
        pretend(bundle, name, {}, measured_on="another machine")  # its figures say nothing about this one
    calls: list[list[str]] = []

    def measured(directory: Path, names: list[str]) -> dict[str, dict[str, float]]:
        calls.append(names)
        return {**FP32_SPEEDS, **INT8_SPEEDS}

    monkeypatch.setattr("imgclf.deploy.runtime._measure", measured)
    assert resolve_runtime(bundle, "auto", batch_size=64) == "onnx-int8"
    assert resolve_runtime(bundle, "auto", batch_size=1) == "onnx"
    assert calls == [["torch", "onnx", "onnx-int8"]]  # measured once, then remembered
    assert resolve_runtime(bundle, "auto", batch_size=64, allow_int8=False) == "torch" and len(calls) == 1


def test_evaluate_measures_the_model_not_its_int8_file(bundle: Path, exported: tuple[Path, Path], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgclf")
    imgclf.evaluate(bundle, exported[1], out=tmp_path / "evaluation")  # batch 64, where int8 measured fastest
    assert [message for message in caplog.messages if message.startswith("runtime ")] == [
        "runtime torch: the fastest of torch, onnx measured on this machine at batch 64 (400 images/s)"]
