"""OpenVINO: export with parity, its runtime through predict and serve, int8 within the ONNX int8 bound, and
--runtime auto choosing by a measurement made once per bundle and machine (injected here: tests never time)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny_run

import imgclf
from imgclf.deploy import runtime_choice
from imgclf.deploy.runtime import resolve_runtime
from imgclf.errors import ImgclfError


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    run = train_tiny_run(tmp_path_factory.mktemp("openvino"))
    imgclf.export(run, "openvino")
    return run


@pytest.mark.slow
def test_export_proves_parity_and_the_runtime_predicts_as_torch(run: Path) -> None:
    folder = run / "model" / "model.openvino"
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    meta = json.loads((run / "model" / "model.openvino.json").read_text())
    assert meta["format"] == "openvino" and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["parity"]["batch_sizes"][0] == 1 and meta["measured_on"] == runtime_choice.machine()
    images = sorted((run.parent / "data").rglob("*.png"))[::7]
    reference = imgclf.load(run, runtime="torch", precision="fp32")
    openvino = imgclf.load(run, runtime="openvino")
    assert openvino.runtime.name == "openvino"
    np.testing.assert_allclose(openvino.predict_proba(images), reference.predict_proba(images), atol=1e-4)
    rows = list(imgclf.predict(run, images, runtime="openvino"))
    assert [row.prediction for row in rows] == [path.parent.name for path in images]


@pytest.mark.slow
def test_serve_runs_the_openvino_runtime(run: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from test_serve import LIMITS, encoded, start_server

    from imgclf.serve.app import create_app

    url, server, thread = start_server(create_app(imgclf.load(run, runtime="openvino"), "colours", "openvino",
                                                  LIMITS, max_wait_ms=1))
    try:
        answer = httpx.post(f"{url}/v1/predict", files=[("file", ("red.jpg", encoded((220, 30, 30)), "image/jpeg"))])
    finally:
        server.should_exit = True
        thread.join(10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["runtime"] == "openvino" and answer.json()["predictions"][0]["prediction"] == "red"


@pytest.mark.slow
def test_int8_is_kept_only_within_the_accuracy_bound(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    bundle = tmp_path / "model"
    shutil.copytree(run / "model", bundle)
    shutil.copy(run / "split.csv", tmp_path / "split.csv")
    result = imgclf.export(bundle, "openvino", quantize="int8")
    assert result.quantization.accuracy_change >= -0.02  # the default --max-accuracy-drop, as for ONNX
    assert (bundle / "model.int8.openvino" / "model.xml").is_file()
    assert result.quantization.int8_bytes > 0 and result.quantization.fp32_bytes > 0  # a folder: all its files
    assert imgclf.load(bundle, runtime="openvino-int8").runtime.name == "openvino-int8"


@pytest.mark.slow
def test_auto_measures_once_per_bundle_and_machine_then_remembers(run: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "model"
    shutil.copytree(run / "model", bundle)
    meta_path = bundle / "model.openvino.json"
    meta = json.loads(meta_path.read_text())
    meta["measured_on"] = "another machine"  # its figures say nothing about this one
    meta_path.write_text(json.dumps(meta))
    calls: list[list[str]] = []

    def measured(directory: Path, names: list[str]) -> dict[str, dict[str, float]]:
        calls.append(names)
        return {"torch": {"1": 100.0, "64": 900.0}, "openvino": {"1": 300.0, "64": 500.0}}

    monkeypatch.setattr("imgclf.deploy.runtime._measure", measured)
    assert resolve_runtime(bundle, "auto", batch_size=1) == "openvino"
    assert resolve_runtime(bundle, "auto", batch_size=64) == "torch"
    assert calls == [["torch", "openvino"]]  # measured once, then remembered
    monkeypatch.setattr(runtime_choice, "machine", lambda: "a new machine")
    assert resolve_runtime(bundle, "auto", batch_size=1) == "openvino" and len(calls) == 2
    assert resolve_runtime(bundle, "auto", device="cuda") == "torch"


@pytest.mark.slow
def test_without_openvino_the_message_names_what_to_install(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImgclfError) as caught:
        imgclf.export(run, "openvino", out=run.parent / "nowhere")
    assert str(caught.value) == "OpenVINO is an optional extra: pip install 'imgclf[openvino]'"
    with pytest.raises(ImgclfError, match=r"pip install 'imgclf\[openvino\]'"):
        imgclf.load(run, runtime="openvino")
    assert resolve_runtime(run / "model", "auto", batch_size=1) in ("torch", "onnx")  # openvino is not a candidate
