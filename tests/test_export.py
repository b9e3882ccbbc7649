"""Export (ONNX, TorchScript, int8) with parity checks, and the runtimes predict and evaluate run on."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_run, make_class_folder, run_cli
from processes import run_python

import imgclf
from imgclf.deploy.runtime import resolve_runtime
from imgclf.errors import ImgclfError

INT8_ACCURACY_TOLERANCE = 0.02  # the stated tolerance: int8 may lose at most 2 points of validation accuracy


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run, copied: exports are written into it."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def onnx_run(run: Path) -> Path:
    result = imgclf.export(run, "onnx", quantize="int8")
    assert result.path == run / "model" / "model.onnx"
    return run


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    folder = make_class_folder(tmp_path / "new", per_class=3, seed=5)
    return sorted(folder.rglob("*.png"))


@pytest.mark.slow
def test_onnx_export_records_preprocessing_and_has_a_dynamic_batch(onnx_run: Path) -> None:
    import onnxruntime

    meta = json.loads((onnx_run / "model" / "model.onnx.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["input"]["shape"] == ["batch", 3, 16, 16] and meta["output"]["activation"] == "softmax"
    bundle = json.loads((onnx_run / "model" / "model.json").read_text())
    assert meta["preprocessing"]["mean"] == bundle["mean"] and meta["preprocessing"]["resize"] == bundle["resize"]
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["parity"]["top1_agreement"] == 1.0
    assert set(meta["speed"]["onnx"]) == set(meta["speed"]["torch"]) == {"1", "64"}
    session = onnxruntime.InferenceSession(str(onnx_run / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # any batch size, as a production stack would feed it
        logits = session.run(None, {"input": np.zeros((batch, 3, 16, 16), np.float32)})[0]
        assert logits.shape == (batch, 3)


@pytest.mark.slow
def test_onnx_runtime_predicts_what_torch_predicts(onnx_run: Path, images: list[Path], tmp_path: Path) -> None:
    on_torch = imgclf.load(onnx_run, runtime="torch", precision="fp32")
    on_onnx = imgclf.load(onnx_run, runtime="onnx")
    assert on_onnx.runtime.name == "onnx" and on_torch.runtime.name == "torch"
    np.testing.assert_allclose(on_onnx.predict_proba(images), on_torch.predict_proba(images), atol=1e-4)
    assert [top[0][0] for top in on_onnx.predict(images)] == [path.parent.name for path in images]
    result = run_cli("predict", str(onnx_run), str(images[0].parent.parent), "--runtime", "onnx", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["prediction"] for row in rows] == [Path(row["path"]).parent.name for row in rows]
    on_eval = imgclf.evaluate(onnx_run, images[0].parent.parent, out=tmp_path / "eval", runtime="onnx")
    assert on_eval.metrics["accuracy"] == 1.0


@pytest.mark.slow
def test_int8_model_is_within_the_stated_accuracy_tolerance(onnx_run: Path, images: list[Path]) -> None:
    meta = json.loads((onnx_run / "model" / "model.int8.onnx.json").read_text())
    quantization = meta["quantization"]
    assert quantization["int8_accuracy"] >= quantization["fp32_accuracy"] - INT8_ACCURACY_TOLERANCE
    assert quantization["images"] == 6 and set(quantization["speedup"]) == {"1", "64"}
    int8 = imgclf.load(onnx_run, runtime="onnx-int8")
    assert [top[0][0] for top in int8.predict(images)] == [path.parent.name for path in images]


def test_torchscript_export_matches(run: Path, images: list[Path], tmp_path: Path) -> None:
    import torch

    result = imgclf.export(run, "torchscript", out=tmp_path / "ts")
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.batch_sizes[0] == 1
    assert json.loads((tmp_path / "ts" / "model.torchscript.pt.json").read_text())["format"] == "torchscript"
    reference = imgclf.load(run, runtime="torch", precision="fp32", tta=False)  # the file is the plain model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; loading still works
        scripted = torch.jit.load(str(result.path))
    pixels = np.stack([reference._pixels(path) for path in images])
    with torch.no_grad():
        logits = scripted(reference.runtime.normalise(pixels)).numpy()
    temperature = json.loads((tmp_path / "ts" / "model.torchscript.pt.json").read_text())["output"]["temperature"]
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy(),
                               reference.predict_proba(images), atol=1e-4)


@pytest.mark.slow
def test_auto_runtime_follows_the_measured_speed_and_ignores_stale_exports(onnx_run: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "model"
    shutil.copytree(onnx_run / "model", bundle)
    for int8 in ("model.int8.onnx", "model.int8.onnx.json"):  # fp32 against torch here; int8: test_runtime_choice.py
        (bundle / int8).unlink()
    meta_path = bundle / "model.onnx.json"
    meta = json.loads(meta_path.read_text())
    meta["speed"].update(onnx={"1": 200.0, "64": 300.0}, torch={"1": 100.0, "64": 400.0})
    meta_path.write_text(json.dumps(meta))
    assert resolve_runtime(bundle, "auto", batch_size=1) == "onnx"
    assert resolve_runtime(bundle, "auto", batch_size=64) == "torch"
    assert resolve_runtime(bundle, "auto", device="cuda", batch_size=1) == "torch"
    meta_path.write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))  # made from other weights
    assert resolve_runtime(bundle, "auto", batch_size=1) == "torch"
    with pytest.raises(ImgclfError, match="no up-to-date model.onnx; run imgclf export"):
        resolve_runtime(bundle, "onnx")


def test_a_failed_parity_check_is_loud_and_leaves_no_file(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ImgclfError, match=r"differs from the original by up to .* nothing was written"):
        imgclf.export(run, "onnx", out=tmp_path / "strict", tolerance=1e-15)
    assert not list((tmp_path / "strict").iterdir())


@pytest.mark.slow
def test_cli_export_prints_parity_and_refuses_what_it_cannot_do(run: Path, tmp_path: Path) -> None:
    result = run_cli("export", str(run), "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement" in result.stderr and "100.0%" in result.stderr
    assert (tmp_path / "cli" / "model.onnx").is_file() and (tmp_path / "cli" / "model.onnx.json").is_file()
    cases = [(["--format", "savedmodel"], "savedmodel cannot export .* a torch model; choose onnx or torchscript"),
             (["--format", "pdf"], "--format pdf is not known"),
             (["--format", "torchscript", "--quantize", "int8"], "--quantize int8 works on ONNX, TFLite and OpenVINO exports, not torchscript; add --format onnx"),
             (["--quantize", "int4"], "--quantize int4 is not supported")]
    for options, message in cases:
        refused = run_cli("export", str(run), *options, "--out", str(tmp_path / "refused"))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert __import__("re").search(message, refused.stderr), refused.stderr
    bare = tmp_path / "bare"
    shutil.copytree(run / "model", bare)  # a bundle without its run: no split.csv to calibrate on
    with pytest.raises(ImgclfError, match="add --data DATA"):
        imgclf.export(bare, "onnx", quantize="int8")


@pytest.mark.slow
@pytest.mark.subprocess
def test_onnx_runtime_needs_no_torch(onnx_run: Path, images: list[Path]) -> None:
    script = ("import sys, imgclf; clf = imgclf.load(sys.argv[1], runtime='onnx'); print(clf.predict(sys.argv[2])[0][0]);"
              "print('torch' in sys.modules)")
    result = run_python("-c", script, str(onnx_run), str(images[0]), timeout=120)
    assert result.stdout.split() == [images[0].parent.name, "False"], result.stderr
