"""The engines by backend name, and what each backend checks before any framework is imported.

``--backend`` names one :class:`Backend`: how it reads ``--model`` and
finds local pretrained weights, the options it refuses, and the engine
class (imported only when training starts, so the CLI stays fast and a
missing TensorFlow is a one-line error). To add an engine, write a class
that satisfies :class:`imgclf.engines.contract.Engine` and register it here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imgclf.backends import keras_model_name, require_tensorflow
from imgclf.config import TrainConfig
from imgclf.errors import ImgclfError

if TYPE_CHECKING:
    from imgclf.engines.contract import Engine
    from imgclf.runs import RunDirectory

WeightsSource = Callable[[str], "str | None"]  # model name -> a local pretrained weights file, if any


@dataclass(frozen=True)
class Backend:
    name: str
    engine_class: str  # "module:Class"
    require: Callable[[], None]  # raises, with the install command, when the framework is missing
    prepare: Callable[[TrainConfig], tuple[TrainConfig, WeightsSource]]  # checks and spells --model
    refused: Callable[[TrainConfig, bool], list[str]]  # (config, multi-label data) -> options it cannot honour
    distributed: bool = False  # trains as one rank of a torchrun job

    def check(self, config: TrainConfig, multilabel: bool) -> None:
        """Refuse, by name, the options this engine does not implement (rather than ignore them)."""
        named = self.refused(config, multilabel)
        if named:
            raise ImgclfError(f"--backend {self.name} does not support {', '.join(named)}; "
                              f"drop it or train with --backend {DEFAULT_BACKEND}")

    def check_processes(self, processes: int) -> None:
        """Refuse a run of ``processes`` processes (torchrun, ``--nproc``) when this engine cannot train so."""
        if processes > 1 and not self.distributed:
            raise ImgclfError(f"--backend {self.name} cannot train in {processes} processes (torchrun, --nproc); "
                              f"train with --backend {DEFAULT_BACKEND}, or in one process")

    def engine(self, config: TrainConfig, run: RunDirectory) -> Engine:
        """A new engine for this run (imports the framework)."""
        module, name = self.engine_class.split(":")
        factory = getattr(importlib.import_module(module), name)
        engine: Engine = factory(config, run)
        return engine


def _prepare_torch(config: TrainConfig) -> tuple[TrainConfig, WeightsSource]:
    from imgclf.models import model_info, pretrained_source

    if config.model is not None:
        model_info(config.model)  # an unknown name fails now, with the closest names, not after decoding
    return config, pretrained_source


def _prepare_tensorflow(config: TrainConfig) -> tuple[TrainConfig, WeightsSource]:
    """Keras models by name (the seed's CNN by default); pretrained only when asked for.

    Keras downloads ImageNet weights on demand, so no local file is assumed.
    """
    require_tensorflow()
    return replace(config, model=keras_model_name(config.model or "tutorial-cnn")), lambda name: None


def _tensorflow_refuses(config: TrainConfig, multilabel: bool) -> list[str]:
    unsupported = {
        "--time-budget": config.time_budget is not None,
        "--mixup": config.mixup > 0,
        "--cutmix": config.cutmix > 0,
        "--ema": bool(config.ema),
        "--lookahead": bool(config.lookahead),
        "--optimizer muon": config.optimizer == "muon",
        "--whitening-bias-epochs": config.whitening_bias_epochs is not None,
        "--low-res": config.low_res is not None,
        "--l1": config.l1 > 0,
        "--dropout": config.dropout is not None,
        "--drop-path": config.drop_path is not None,
        "--compile": config.compile,
        "--sync-bn": config.sync_bn,
        "--strategy tail": config.strategy == "tail",
        f"--precision {config.precision}": config.precision not in ("auto", "fp32"),
        "--device cuda (tensorflow-cpu)": config.device == "cuda",
    }
    return [name for name, used in unsupported.items() if used]


BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", "imgclf.engines.torch_engine:TorchEngine", lambda: None, _prepare_torch,
                     lambda config, multilabel: [], distributed=True),
    "tensorflow": Backend("tensorflow", "imgclf.engines.keras_engine:KerasEngine", require_tensorflow,
                          _prepare_tensorflow, _tensorflow_refuses),
}
DEFAULT_BACKEND = "torch"


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or a one-line error listing the registered ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ImgclfError(f"--backend {name} is not known; choose one of {', '.join(BACKENDS)}") from None
