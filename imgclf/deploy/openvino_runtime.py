"""OpenVINO: the export (``--format openvino``), its int8 form (NNCF) and the runtime (``--runtime openvino``).

The export is OpenVINO's own IR, a folder ``model.openvino/`` holding
``model.xml`` and ``model.bin``, with float32 NCHW input ``input`` and
``logits`` output like the ONNX file, so any OpenVINO stack can load it.
The runtime puts the normalisation into the compiled model (OpenVINO's
pre-processing: uint8 NHWC in, mean and scale, layout), so no numpy or
torch work is left per batch, and runs in f32 (``INFERENCE_PRECISION_HINT``):
OpenVINO's default on CPUs with AMX or AVX512-BF16 is bf16, which the
parity check against PyTorch fp32 would not pass.

OpenVINO is optional (``pip install 'imgclf[openvino]'``); asking for it
without it installed is one line naming what to install.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.deploy.bundle import BundleInfo
from imgclf.errors import ImgclfError, one_line

log = logging.getLogger(__name__)

OPENVINO_FILES = {"openvino": "model.openvino", "openvino-int8": "model.int8.openvino"}  # folders, in the bundle
XML, BIN = "model.xml", "model.bin"
MISSING = "OpenVINO is an optional extra: pip install 'imgclf[openvino]'"


def require_openvino() -> Any:
    """The openvino module, or the one-line error that says how to get it."""
    try:
        import openvino
    except ImportError:
        raise ImgclfError(MISSING) from None
    return openvino


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def write_openvino(model: Any, info: BundleInfo, path: Path) -> None:
    """Convert the torch model (fp32, CPU) to OpenVINO IR in the folder ``path``, with a dynamic batch dimension."""
    import torch

    ov = require_openvino()
    example = torch.zeros(2, info.channels, info.image_size, info.image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings; parity is the real check
        converted = ov.convert_model(model.eval(), example_input=example,
                                     input=[ov.PartialShape([-1, info.channels, info.image_size, info.image_size])])
    converted.inputs[0].get_tensor().set_names({"input"})
    converted.outputs[0].get_tensor().set_names({"logits"})
    path.mkdir(parents=True, exist_ok=True)
    ov.save_model(converted, str(path / XML), compress_to_fp16=False)  # fp16 weights would miss the parity check


def load_openvino(path: Path, info: BundleInfo) -> OpenVinoRuntime:
    return OpenVinoRuntime(path, info)


class OpenVinoRuntime:
    """An OpenVINO IR folder compiled for the CPU, taking uint8 NHWC pixels (normalisation compiled in)."""

    def __init__(self, path: Path, info: BundleInfo, name: str = "openvino") -> None:
        ov = require_openvino()
        from openvino.preprocess import PrePostProcessor

        core = ov.Core()
        try:
            model = core.read_model(str(path / XML))
        except Exception as error:  # OpenVINO raises its own untyped errors for a damaged or missing file
            raise ImgclfError(f"{path}: OpenVINO cannot load it ({one_line(error)}); "
                              "export again") from None
        channels = info.channels
        steps = PrePostProcessor(model)
        steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        steps.input().model().set_layout(ov.Layout("NCHW"))
        steps.input().preprocess().convert_element_type(ov.Type.f32) \
            .mean([value * 255.0 for value in info.mean[:channels]]) \
            .scale([value * 255.0 for value in info.std[:channels]])
        self.compiled = core.compile_model(steps.build(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.name = name

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, classes) float32 logits."""
        return np.asarray(self.compiled(np.ascontiguousarray(pixels))[0], dtype=np.float32)


def openvino_int8(fp32_path: Path, partial: Path, info: BundleInfo, calibration: np.ndarray,
                  model: Any) -> tuple[OpenVinoRuntime, OpenVinoRuntime]:
    """NNCF's post-training quantisation of the IR (int8 weights and activations), calibrated on ``calibration``."""
    ov = require_openvino()
    try:
        import nncf
    except ImportError:
        raise ImgclfError("--quantize int8 of an OpenVINO export needs NNCF: pip install 'imgclf[openvino]'") from None
    mean = np.asarray(info.mean[:info.channels], dtype=np.float32)
    std = np.asarray(info.std[:info.channels], dtype=np.float32)
    batches = [((calibration[start:start + 16].astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
               for start in range(0, len(calibration), 16)]
    logging.getLogger("nncf").setLevel(logging.ERROR)  # per-layer progress notes mean nothing to a user
    quantised = nncf.quantize(ov.Core().read_model(str(fp32_path / XML)), nncf.Dataset(batches),
                              subset_size=len(calibration))
    partial.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantised, str(partial / XML), compress_to_fp16=False)
    return OpenVinoRuntime(fp32_path, info), OpenVinoRuntime(partial, info, name="openvino-int8")
