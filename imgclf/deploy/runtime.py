"""Where a classifier's forward pass runs: PyTorch, Keras, ONNX Runtime or OpenVINO, behind one small interface.

A runtime turns a batch of decoded uint8 images (N, H, W, C), already at the
model's input size, into logits (N, classes); normalisation is its job, so
each does it the cheapest way it can (torch on its device; numpy for ONNX
Runtime, which then needs no torch at all). Everything around it, flip TTA,
softmax, top-k, is shared by :class:`~imgclf.deploy.classifier.Classifier`.

``auto`` chooses by measurement, not by rule: ``imgclf export --format onnx``
(or ``openvino``) times the native runtime (PyTorch, or Keras for a tensorflow
bundle) and the export on this machine at batch 1 and 64 and records the
figures, with the machine, beside the file (``--quantize int8`` records the
int8 file's the same way); ``auto`` then takes the fastest at the batch size
nearest to the caller's (ONNX Runtime fp32 wins at batch 1 on a CPU, PyTorch
bf16 can win at batch 64, an int8 export, where the user made one, often
wins both; a GPU makes PyTorch win). On another machine it measures once and
remembers (:mod:`imgclf.deploy.runtime_choice`, which says why int8 files
are candidates). An export whose weights no longer match the bundle's is
never used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgclf.backends import RECORDS, record_with_runtime
from imgclf.deploy.bundle import WEIGHTS_FILE, BundleInfo, read_bundle_info
from imgclf.deploy.metadata import read_export
from imgclf.deploy.openvino_runtime import OPENVINO_FILES, OpenVinoRuntime, openvino_installed, require_openvino
from imgclf.deploy.runtime_choice import SPEED_BATCHES, choose, usable_exports
from imgclf.errors import ImgclfError, one_line

RUNTIMES = ("auto", "torch", "keras", "onnx", "onnx-int8", "openvino", "openvino-int8")
FORK_UNSAFE = {"keras"}  # native runtimes whose thread pools make a later fork (decode workers) hang
# the exported file each ONNX runtime loads, inside the bundle folder
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
INT8_RUNTIMES = ("onnx-int8", "openvino-int8")  # within --max-accuracy-drop of fp32, not parity-checked


FEATURES_OUTPUT = "features"  # an ONNX export's second output: the pooled features (the prediction log's embedding)
HEAD_API = ("forward_features", "forward_head", "get_classifier")  # timm's, and our models': features apart from logits


def has_head_api(model: Any) -> bool:
    """Whether ``model`` can give its pooled features and its logits from one pass (not a TorchScript file)."""
    return all(hasattr(model, name) for name in HEAD_API)


def native_of(backend: str, directory: Path | str = "this bundle") -> str:
    """The runtime that runs ``backend``'s bundles in their own framework (its record's), or a one-line error."""
    record = RECORDS.get(backend)
    if record is None:
        raise ImgclfError(f"{directory} is a {backend} model; this imgclf loads {' and '.join(RECORDS)} bundles")
    return record.runtime


class Runtime(Protocol):
    """Logits for a batch of decoded images at the model's input size.

    A runtime that can also give the pooled features of the same forward pass
    has ``logits_and_features`` (PyTorch's); the others log no embedding.
    """

    name: str

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, classes) float32 logits."""
        ...


def resolve_runtime(directory: Path, requested: str, device: str = "auto", batch_size: int = 64,
                    native: str = "torch", allow_int8: bool = True) -> str:
    """The runtime (one of :data:`RUNTIMES` but ``auto``) that runs ``--runtime requested`` on this bundle.

    ``allow_int8=False`` keeps ``auto`` among the runtimes whose answers
    match the model's (what measures the model itself asks for); a runtime
    named outright is always honoured.
    """
    if requested not in RUNTIMES:
        raise ImgclfError(f"--runtime {requested} is not known; choose one of {', '.join(RUNTIMES)}")
    if record_with_runtime(requested) is not None:
        if requested != native:
            raise ImgclfError(f"--runtime {requested} cannot run {directory}, a {native} model; "
                              f"use --runtime {native}, onnx or auto")
        return native
    if requested in ONNX_FILES:
        if device == "cuda":
            raise ImgclfError(f"--runtime {requested} runs on the CPU (onnxruntime); use --runtime torch for --device cuda")
        if read_export(directory, directory / ONNX_FILES[requested]) is None:
            how = " --quantize int8" if requested == "onnx-int8" else ""
            raise ImgclfError(f"{directory} has no up-to-date {ONNX_FILES[requested]}; run imgclf export {directory} "
                              f"--format onnx{how} first, or use --runtime {native}")
        return requested
    if requested in OPENVINO_FILES:
        return _openvino(directory, requested, device, native)
    if device not in ("auto", "cpu"):
        return native
    exports = usable_exports(directory, _installed_exports(allow_int8))
    return choose(directory, native, exports, batch_size, lambda names: _measure(directory, names))


def _installed_exports(allow_int8: bool) -> dict[str, str]:
    """{runtime: its file in the bundle} of every export runtime installed here: ``auto``'s candidates."""
    files = {**(ONNX_FILES if _onnx_installed() else {}), **(OPENVINO_FILES if openvino_installed() else {})}
    return {runtime: name for runtime, name in files.items() if allow_int8 or runtime not in INT8_RUNTIMES}


def _openvino(directory: Path, requested: str, device: str, native: str) -> str:
    """``--runtime openvino`` / ``openvino-int8`` when its export is there and up to date (see openvino_runtime)."""
    if device == "cuda":
        raise ImgclfError(f"--runtime {requested} runs on the CPU (OpenVINO); use --runtime torch for --device cuda")
    require_openvino()
    if read_export(directory, directory / OPENVINO_FILES[requested]) is None:
        how = " --quantize int8" if requested.endswith("int8") else ""
        raise ImgclfError(f"{directory} has no up-to-date {OPENVINO_FILES[requested]}; run imgclf export {directory} "
                          f"--format openvino{how} first, or use --runtime {native}")
    return requested


def _measure(directory: Path, names: list[str]) -> dict[str, dict[str, float]]:
    """Time the named runtimes of the bundle on this machine (``auto``'s first use, when no export measured them)."""
    info = read_bundle_info(directory)
    return compare_speeds({name: load_runtime(directory, info, name) for name in names}, info)


def _onnx_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def load_runtime(directory: Path, info: BundleInfo, runtime: str, device: str = "auto", precision: str = "auto"
                 ) -> Runtime:
    """The resolved runtime (``resolve_runtime``) loaded from the bundle folder."""
    if runtime in ONNX_FILES:
        return OnnxRuntime(directory / ONNX_FILES[runtime], info, name=runtime)
    if runtime in OPENVINO_FILES:
        return OpenVinoRuntime(directory / OPENVINO_FILES[runtime], info, name=runtime)
    if runtime == "keras":
        from imgclf.deploy.keras_runtime import KerasRuntime

        return KerasRuntime.load(directory, info)
    return TorchRuntime.load(directory, info, device=device, precision=precision)


def load_torch_model(directory: Path, info: BundleInfo) -> Any:
    """The bundle's torch model (fp32, CPU, trainable as built): the registry architecture with its safetensors."""
    from safetensors.torch import load_file

    from imgclf.models import create_model

    model = create_model(info.architecture, len(info.classes), in_chans=info.channels,
                         image_size=info.image_size, **info.model_args)
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except Exception as error:  # safetensors and torch raise several types for a damaged or foreign file
        raise ImgclfError(f"{directory / WEIGHTS_FILE} does not fit {info.architecture} ({one_line(error)})") from None
    return model


class TorchRuntime:
    """The model in PyTorch: BatchNorm folded, channels-last, bf16 autocast where the CPU has it, or on CUDA."""

    name = "torch"

    def __init__(self, model: Any, info: BundleInfo, device: str = "auto", precision: str = "auto") -> None:
        import torch

        from imgclf.models.device import choose_device, choose_precision
        from imgclf.models.folding import inference_copy

        self.info = info
        self.device = choose_device(device)
        self.precision = choose_precision(precision, self.device)
        # BatchNorm folded into the convolutions: the same answers, 1.45x faster for EfficientNet-Lite0
        example = torch.zeros(1, info.channels, info.image_size, info.image_size, device=self.device)
        self.model = inference_copy(model.to(self.device), example.contiguous(memory_format=torch.channels_last))

    @classmethod
    def load(cls, directory: Path, info: BundleInfo, device: str = "auto", precision: str = "auto") -> TorchRuntime:
        """Rebuild the architecture from the registry and load the safetensors weights into it."""
        return cls(load_torch_model(directory, info), info, device=device, precision=precision)

    def normalise(self, pixels: np.ndarray) -> Any:
        """uint8 NHWC -> normalised float32 NCHW (channels-last in memory) on the device, as in training."""
        import torch

        from imgclf.data.augment import augment_batch
        from imgclf.data.augment_presets import PRESETS

        batch = np.ascontiguousarray(pixels)
        if not batch.flags.writeable:  # e.g. np.asarray(a PIL image): torch warns on read-only memory; one batch's copy
            batch = batch.copy()
        return augment_batch(torch.from_numpy(batch).to(self.device), PRESETS["none"],
                             torch.Generator(), tuple(self.info.mean), tuple(self.info.std))

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        from imgclf.models.device import autocast

        with torch.no_grad(), autocast(self.device, self.precision):
            return self.model(self.normalise(pixels)).float().cpu().numpy()

    @property
    def gives_features(self) -> bool:
        """Whether :meth:`logits_and_features` gives features: a model with timm's head API (not TorchScript)."""
        return has_head_api(self.model)

    def logits_and_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, classes) logits and (N, D) pooled features from one forward pass (the prediction log's embedding).

        The features are what feeds the final layer (``forward_head(...,
        pre_logits=True)``, the :class:`~imgclf.embeddings.embedder.Embedder`'s
        embedding), and the logits are that layer applied to them, so the
        answer is the one :meth:`logits` gives. A model without timm's head
        API (a TorchScript file) gives None for the features.
        """
        import torch

        from imgclf.models.device import autocast

        model = self.model
        if not self.gives_features:
            return self.logits(pixels), None
        with torch.no_grad(), autocast(self.device, self.precision):
            pooled = model.forward_head(model.forward_features(self.normalise(pixels)), pre_logits=True)  # type: ignore[operator]  # timm's head API, checked above
            logits = model.get_classifier()(pooled)  # type: ignore[operator]  # as above
            return logits.float().cpu().numpy(), pooled.float().cpu().numpy()


class OnnxRuntime:
    """An exported ``.onnx`` file in ONNX Runtime (CPU); normalisation in numpy, so no torch is imported."""

    def __init__(self, path: Path, info: BundleInfo, name: str = "onnx", threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads  # 0: one per physical core
        # No busy-waiting between runs: spinning threads take the cores that decoding, the HTTP server and other
        # processes need; on this 2-core machine under load, batch 1 ran 1.4-1.8x faster without it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers are noise to users
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for a damaged file
            raise ImgclfError(f"{path}: ONNX Runtime cannot load it ({one_line(error)}); export again") from None
        self.name = name
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [output.name for output in self.session.get_outputs()]
        self.gives_features = FEATURES_OUTPUT in self.outputs[1:]  # exports made before the log have logits only
        channels = info.channels
        self.scale = (1.0 / (255.0 * np.asarray(info.std[:channels], dtype=np.float32)))
        self.offset = -np.asarray(info.mean[:channels], dtype=np.float32) / np.asarray(info.std[:channels], dtype=np.float32)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW, (x / 255 - mean) / std as one multiply-add."""
        batch = pixels.astype(np.float32) * self.scale + self.offset
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(self.outputs[:1], {self.input_name: self.normalise(pixels)})[0].astype(
            np.float32, copy=False)

    def logits_and_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits and the file's ``features`` output from one run (None for an export without it)."""
        if not self.gives_features:
            return self.logits(pixels), None
        logits, features = self.session.run([self.outputs[0], FEATURES_OUTPUT], {self.input_name: self.normalise(pixels)})
        return logits.astype(np.float32, copy=False), features.astype(np.float32, copy=False)


def compare_speeds(runtimes: dict[str, Runtime], info: BundleInfo, batches: tuple[int, ...] = SPEED_BATCHES,
                   rounds: int = 3, seconds: float = 0.3) -> dict[str, dict[str, float]]:
    """Images/s of each runtime at each batch size: the best of ``rounds`` interleaved measurements.

    Interleaving and keeping the best make the comparison fair on a machine
    that other processes share: a burst of load hits every runtime alike, and
    the best round is the one least disturbed.
    """
    best = {name: dict.fromkeys((str(batch) for batch in batches), 0.0) for name in runtimes}
    for _ in range(rounds):
        for name, runtime in runtimes.items():
            for batch in batches:
                rate = throughput(runtime, info, batch, seconds)
                best[name][str(batch)] = max(best[name][str(batch)], round(rate, 1))
    return best


def throughput(runtime: Runtime, info: BundleInfo, batch: int, seconds: float = 0.5, min_runs: int = 3) -> float:
    """Images per second of ``runtime.logits`` on random images at ``batch``, after one warm-up call."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, info.image_size, info.image_size, info.channels), dtype=np.uint8)
    runtime.logits(pixels)
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < seconds:
        runtime.logits(pixels)
        runs += 1
    return runs * batch / (time.perf_counter() - started)
