"""Exports of a Keras bundle (SavedModel, TFLite, ONNX, int8 ONNX) with parity checks, and the runtimes that load them."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, run_cli
from processes import run_python

import imgclf
from imgclf.deploy.classifier import probabilities_from_logits
from imgclf.deploy.runtime import resolve_runtime
from imgclf.errors import ImgclfError

pytestmark = pytest.mark.tensorflow  # skipped where the TensorFlow extra is missing (conftest.py)

INT8_ACCURACY_TOLERANCE = 0.02  # as for torch exports: int8 may lose at most 2 points of validation accuracy


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tutorial-cnn trained one epoch on the colour images: fast, and it has learnt them."""
    root = tmp_path_factory.mktemp("keras-export")
    data = make_class_folder(root / "data", per_class=20)
    result = imgclf.train(data, out=root / "run", backend="tensorflow", model="tutorial-cnn", epochs=1, image_size=16,
                          batch_size=8, workers=1)
    return result.run_dir


@pytest.fixture(scope="module")
def onnx_run(keras_run: Path) -> Path:
    result = imgclf.export(keras_run, "onnx", quantize="int8")
    assert result.path == keras_run / "model" / "model.onnx"
    return keras_run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = make_class_folder(tmp_path_factory.mktemp("new") / "new", per_class=3, seed=5)
    return sorted(folder.rglob("*.png"))


def keras_probabilities(run: Path, images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's own probabilities on ``images`` and the decoded pixels it computed them from."""
    classifier = imgclf.load(run, runtime="keras", tta=False)
    pixels = np.stack([classifier._pixels(path) for path in images])
    return classifier.predict_pixels(pixels), pixels


def test_savedmodel_export_serves_the_keras_model_s_answers_at_any_batch(keras_run: Path, images: list[Path],
                                                                         tmp_path: Path) -> None:
    from imgclf.models.keras_setup import tf

    result = imgclf.export(keras_run, "savedmodel", out=tmp_path)
    assert result.path == tmp_path / "model.savedmodel" and (result.path / "saved_model.pb").is_file()
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.top1_agreement == 1.0
    assert result.parity.batch_sizes == [1, result.parity.images] and result.bytes > 0
    meta = json.loads((tmp_path / "model.savedmodel.json").read_text())
    assert meta["backend"] == "tensorflow" and meta["input"]["layout"] == "NHWC"
    assert meta["input"]["shape"] == ["batch", 16, 16, 3] and meta["classes"] == ["blue", "green", "red"]
    assert meta["preprocessing"]["std"] == pytest.approx([1 / 255] * 3)  # raw 0..255 pixels in
    expected, pixels = keras_probabilities(keras_run, images)
    serving = tf.saved_model.load(str(result.path)).signatures["serving_default"]  # as TensorFlow Serving calls it
    for batch in (1, len(pixels)):
        logits = serving(input=tf.constant(pixels[:batch].astype(np.float32)))["logits"].numpy()
        np.testing.assert_allclose(probabilities_from_logits(logits / meta["output"]["temperature"], False),
                                   expected[:batch], atol=1e-5)
    again = imgclf.export(keras_run, "savedmodel", out=tmp_path)  # an existing folder is replaced whole
    assert again.path.is_dir() and sorted(path.name for path in tmp_path.iterdir()) == ["model.savedmodel",
                                                                                        "model.savedmodel.json"]


def test_tflite_export_and_its_int8_twin_resize_their_input_for_any_batch(keras_run: Path, images: list[Path],
                                                                          tmp_path: Path) -> None:
    from imgclf.models.keras_setup import tf

    result = imgclf.export(keras_run, "tflite", out=tmp_path, quantize="int8")
    assert result.path == tmp_path / "model.tflite" and result.parity.max_abs_diff <= 1e-4
    assert result.parity.top1_agreement == 1.0
    meta = json.loads((tmp_path / "model.tflite.json").read_text())
    assert meta["input"]["layout"] == "NHWC" and meta["bytes"] == result.path.stat().st_size
    assert set(meta["speed"]) == {"keras", "tflite"} and set(meta["speed"]["tflite"]) == {"1", "64"}
    expected, pixels = keras_probabilities(keras_run, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that it moves to ai_edge_litert
        interpreter = tf.lite.Interpreter(model_path=str(result.path))
    runner = interpreter.get_signature_runner("serving_default")  # as a mobile app calls it; the batch is dynamic
    for batch in (1, len(pixels)):
        logits = runner(input=pixels[:batch].astype(np.float32))["logits"]
        np.testing.assert_allclose(probabilities_from_logits(logits / meta["output"]["temperature"], False),
                                   expected[:batch], atol=1e-5)
    quantization = result.quantization  # full-integer TFLite, calibrated on the run's train split, float in and out
    assert quantization.path == tmp_path / "model.int8.tflite" and quantization.int8_bytes < quantization.fp32_bytes
    assert quantization.int8_accuracy >= quantization.fp32_accuracy - INT8_ACCURACY_TOLERANCE
    int8_meta = json.loads((tmp_path / "model.int8.tflite.json").read_text())
    assert int8_meta["format"] == "tflite" and set(int8_meta["speed"]["tflite-int8"]) == {"1", "64"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = tf.lite.Interpreter(model_path=str(quantization.path)).get_signature_runner("serving_default")
    logits = int8(input=pixels.astype(np.float32))["logits"]
    assert list(logits.argmax(axis=1)) == list(expected.argmax(axis=1))


@pytest.mark.subprocess
def test_onnx_export_takes_nchw_like_a_torch_export_and_runs_predict(onnx_run: Path, images: list[Path]) -> None:
    import onnxruntime

    meta = json.loads((onnx_run / "model" / "model.onnx.json").read_text())
    assert meta["input"] == {"name": "input", "shape": ["batch", 3, 16, 16], "dtype": "float32", "layout": "NCHW"}
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["parity"]["top1_agreement"] == 1.0
    assert set(meta["speed"]) == {"keras", "onnx"} and meta["opset"] == 17
    session = onnxruntime.InferenceSession(str(onnx_run / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["logits"]
    expected, pixels = keras_probabilities(onnx_run, images)
    for batch in (1, len(pixels)):
        nchw = np.ascontiguousarray(pixels[:batch].astype(np.float32).transpose(0, 3, 1, 2))
        logits = session.run(None, {"input": nchw})[0] / meta["output"]["temperature"]  # as the metadata says
        np.testing.assert_allclose(probabilities_from_logits(logits, False), expected[:batch], atol=1e-5)
    on_onnx = imgclf.load(onnx_run, runtime="onnx", tta=False)
    assert on_onnx.runtime.name == "onnx"
    np.testing.assert_allclose(on_onnx.predict_proba(images), expected, atol=1e-5)
    result = run_cli("predict", str(onnx_run), str(images[0].parent.parent), "--runtime", "onnx", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(images) and [row["prediction"] for row in rows] == [Path(row["path"]).parent.name
                                                                                 for row in rows]
    script = ("import sys, imgclf; print(imgclf.load(sys.argv[1], runtime='onnx').predict(sys.argv[2])[0][0]); "
              "print(sorted({'tensorflow', 'keras', 'torch'} & set(sys.modules)))")
    alone = run_python("-c", script, str(onnx_run), str(images[0]), timeout=120)
    assert alone.stdout.split("\n")[:2] == [images[0].parent.name, "[]"], alone.stderr  # neither framework loaded


def test_int8_onnx_of_a_keras_model_is_within_the_stated_accuracy_tolerance(onnx_run: Path, images: list[Path]) -> None:
    quantization = json.loads((onnx_run / "model" / "model.int8.onnx.json").read_text())["quantization"]
    assert quantization["int8_accuracy"] >= quantization["fp32_accuracy"] - INT8_ACCURACY_TOLERANCE
    assert quantization["int8_bytes"] < quantization["fp32_bytes"]
    int8 = imgclf.load(onnx_run, runtime="onnx-int8")
    assert [top[0][0] for top in int8.predict(images)] == [path.parent.name for path in images]


def test_runtimes_of_a_keras_bundle(onnx_run: Path) -> None:
    directory = onnx_run / "model"
    assert resolve_runtime(directory, "keras", native="keras") == "keras"
    measured = {**json.loads((directory / "model.onnx.json").read_text())["speed"],
                **json.loads((directory / "model.int8.onnx.json").read_text())["speed"]}  # auto weighs int8 too
    faster = max(("keras", "onnx", "onnx-int8"), key=lambda name: (measured[name]["1"], name == "keras"))
    assert resolve_runtime(directory, "auto", batch_size=1, native="keras") == faster
    at_64 = max(("keras", "onnx", "onnx-int8"), key=lambda name: (measured[name]["64"], name == "keras"))
    assert imgclf.load(onnx_run).runtime.name == at_64  # load's batch is 64: the runtime fastest at 64
    with pytest.raises(ImgclfError, match="--runtime torch cannot run .* a keras model; use --runtime keras"):
        imgclf.load(onnx_run, runtime="torch")


def test_cli_exports_a_keras_model_and_refuses_what_it_cannot_do(keras_run: Path, tmp_path: Path) -> None:
    result = run_cli("export", str(keras_run), "--format", "tflite", "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement" in result.stderr and "100.0%" in result.stderr and "tflite runtime img/s" in result.stderr
    assert "Traceback" not in result.stderr and "deprecated" not in result.stderr and "XNNPACK" not in result.stderr
    cases = [(["--format", "torchscript"], "torchscript cannot export .* a tensorflow model; choose savedmodel or "
                                           "tflite or onnx"),
             (["--format", "savedmodel", "--quantize", "int8"], "--quantize int8 works on ONNX, TFLite and OpenVINO exports, "
                                                                "not savedmodel; add --format tflite")]
    for options, message in cases:
        refused = run_cli("export", str(keras_run), *options, "--out", str(tmp_path / "refused"))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert re.search(message, refused.stderr), refused.stderr


def test_a_failed_parity_check_leaves_no_savedmodel_folder(keras_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf.deploy import keras_export

    real = keras_export.SavedModelRuntime.logits
    monkeypatch.setattr(keras_export.SavedModelRuntime, "logits", lambda self, pixels: real(self, pixels) + 0.1 *
                        np.arange(3, dtype=np.float32))  # an export that drifts, as a broken converter would
    with pytest.raises(ImgclfError, match=r"model.savedmodel: the exported model differs .* nothing was written"):
        imgclf.export(keras_run, "savedmodel", out=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_keras_model_is_explained_with_the_same_kind_of_map(keras_run: Path, images: list[Path]) -> None:
    explanation = imgclf.explain(keras_run, images[0], top_k=2)  # tf.GradientTape Grad-CAM
    assert explanation.maps.shape == (2, 16, 16) and explanation.map.max() == 1.0 and explanation.map.min() >= 0.0
    assert explanation.layer.startswith("max_pooling2d") and len(explanation.top) == 2
