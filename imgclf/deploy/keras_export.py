"""Exporters for Keras bundles (backend: tensorflow): SavedModel, TFLite and ONNX, and runtimes that load them.

A Keras bundle's model takes 0..255 float pixels NHWC and returns logits, its
preprocessing inside; every export keeps that, so the exported file is the
whole classifier:

- ``savedmodel``: a SavedModel folder (``model.savedmodel/``) with a
  ``serve`` function and a ``serving_default`` signature, input ``input``
  (batch, H, W, C), output ``logits``, dynamic batch; TensorFlow Serving
  and the TF.js / TFLite converters load it.
- ``tflite``: a ``.tflite`` flatbuffer converted from that SavedModel (fp32,
  built-in ops only) with the same ``serving_default`` signature; its batch
  dimension is dynamic (-1 in the shape signature), so a runtime resizes the
  input tensor to the batch it feeds.
- ``onnx``: tf2onnx from a ``tf.function`` with a dynamic batch; the graph
  takes NCHW like a torch export (``inputs_as_nchw``), so ``--runtime onnx``
  and ``--quantize int8`` treat both backends' ONNX files alike.

TensorFlow, tf2onnx and the TFLite interpreter are imported only here, after
:mod:`imgclf.models.keras_setup` (torchvision and triton must load first).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.console import native_stderr_silenced
from imgclf.deploy.bundle import BundleInfo
from imgclf.deploy.keras_runtime import keras_input
from imgclf.deploy.metadata import ONNX_OPSET
from imgclf.errors import ImgclfError, one_line


def _tensorflow() -> Any:
    from imgclf.models.keras_setup import tf  # never `import tensorflow` directly: the import order matters

    return tf


def _input_spec(info: BundleInfo) -> Any:
    """float32 (batch, H, W, C), batch dynamic, named ``input`` as in every imgclf export."""
    tf = _tensorflow()
    return tf.TensorSpec((None, info.image_size, info.image_size, info.channels), tf.float32, name="input")


def write_savedmodel(model: Any, info: BundleInfo, path: Path) -> None:
    """A SavedModel folder: ``serve`` and the ``serving_default`` signature (``input`` -> ``logits``)."""
    from imgclf.models.keras_setup import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda images: {"logits": model(images, training=False)},
                         input_signature=[_input_spec(info)])
    archive.write_out(str(path), verbose=False)


def write_tflite(model: Any, info: BundleInfo, path: Path) -> None:
    """A fp32 ``.tflite`` converted from a SavedModel of the model (TFLite's most reliable route for Keras 3)."""
    _convert_tflite(model, info, path, calibration=None)


def write_tflite_int8(model: Any, info: BundleInfo, path: Path, calibration: np.ndarray) -> None:
    """Full-integer post-training quantisation: int8 weights and activations, ranges from ``calibration`` (uint8 NHWC).

    Input and output stay float32, so the file is fed exactly like the fp32 one.
    """
    _convert_tflite(model, info, path, calibration=calibration)


def _convert_tflite(model: Any, info: BundleInfo, path: Path, calibration: np.ndarray | None) -> None:
    tf = _tensorflow()
    with tempfile.TemporaryDirectory(prefix="imgclf-tflite-") as scratch:
        write_savedmodel(model, info, Path(scratch) / "savedmodel")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(scratch) / "savedmodel"))
        if calibration is None:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # runs on every TFLite runtime
        else:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([keras_input(calibration[index:index + 1], info)]
                                                        for index in range(len(calibration)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with native_stderr_silenced():  # the converter prints its settings straight to fd 2
            path.write_bytes(converter.convert())


def write_onnx(model: Any, info: BundleInfo, path: Path) -> None:
    """ONNX through tf2onnx, input ``input`` NCHW (transposed inside the graph), output ``logits``."""
    tf = _tensorflow()  # before tf2onnx, which imports TensorFlow itself
    try:
        import tf2onnx
    except ImportError:
        raise ImgclfError("--format onnx for a Keras model needs tf2onnx; install it with: "
                          "pip install 'imgclf[tensorflow]'") from None
    import onnx

    spec = _input_spec(info)
    function = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET, inputs_as_nchw=["input:0"])
    _name_outputs(proto.graph)
    onnx.save(proto, str(path))


def _name_outputs(graph: Any) -> None:
    """tf2onnx names the output after a TensorFlow op (``Identity:0``); call it ``logits``, the batch ``batch``."""
    old = graph.output[0].name
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = "logits"
    graph.output[0].name = "logits"
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"


class SavedModelRuntime:
    """A SavedModel folder in TensorFlow (the ``serve`` function)."""

    name = "savedmodel"

    def __init__(self, path: Path, info: BundleInfo) -> None:
        tf = _tensorflow()
        self.info = info
        self.loaded = tf.saved_model.load(str(path))  # held: its variables live as long as the loaded object

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.loaded.serve(keras_input(pixels, self.info))["logits"], dtype=np.float32)


class TfliteRuntime:
    """A ``.tflite`` file in TensorFlow's TFLite interpreter; the input tensor is resized to each batch it is fed.

    ``tf.lite.Interpreter`` warns that it moves to the ``ai_edge_litert``
    package; it is still in the pinned TensorFlow and runs the same file, so
    the warning is silenced rather than a second runtime package added.
    """

    def __init__(self, path: Path, info: BundleInfo, name: str = "tflite") -> None:
        tf = _tensorflow()
        self.name = name
        self.info = info
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                self.interpreter = tf.lite.Interpreter(model_path=str(path))
        except ValueError as error:
            raise ImgclfError(f"{path}: TFLite cannot load it ({one_line(error)}); export again") from None
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 0

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        batch = keras_input(pixels, self.info)
        if len(batch) != self.batch:  # resizing re-plans the interpreter's memory: only when the batch changes
            self.interpreter.resize_tensor_input(self.input, list(batch.shape), strict=True)
            with native_stderr_silenced():  # "Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2
                self.interpreter.allocate_tensors()
            self.batch = len(batch)
        self.interpreter.set_tensor(self.input, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output), dtype=np.float32)


def load_savedmodel(path: Path, info: BundleInfo) -> SavedModelRuntime:
    return SavedModelRuntime(path, info)


def load_tflite(path: Path, info: BundleInfo) -> TfliteRuntime:
    return TfliteRuntime(path, info)

