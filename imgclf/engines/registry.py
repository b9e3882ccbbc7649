"""The engines by backend name: each backend's record (:mod:`imgclf.backends`) and how it reads a config.

``--backend`` names one :class:`Backend`: its record (what it refuses and
can do, its engine class, imported only when training starts, so the CLI
stays fast and a missing TensorFlow is a one-line error) and how it reads
``--model`` and finds local pretrained weights. To add an engine, write a
class that satisfies :class:`imgclf.engines.contract.Engine`, register its
record in :mod:`imgclf.backends` and, if it spells models its own way, its
``prepare`` here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imgclf.backends import BackendRecord, backend_record, keras_model_name
from imgclf.config import TrainConfig

if TYPE_CHECKING:
    from imgclf.engines.contract import Engine
    from imgclf.runs import RunDirectory

WeightsSource = Callable[[str], "str | None"]  # model name -> a local pretrained weights file, if any
Prepare = Callable[[TrainConfig], "tuple[TrainConfig, WeightsSource]"]  # checks and spells --model


@dataclass(frozen=True)
class Backend:
    record: BackendRecord
    prepare: Prepare

    @property
    def name(self) -> str:
        return self.record.name

    def require(self) -> None:
        self.record.require()

    def check(self, config: TrainConfig) -> None:
        self.record.check(config)

    def check_processes(self, processes: int) -> None:
        self.record.check_processes(processes)

    def engine(self, config: TrainConfig, run: RunDirectory) -> Engine:
        """A new engine for this run (imports the framework)."""
        module, name = self.record.engine_class.split(":")
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
    backend_record("tensorflow").require()
    return replace(config, model=keras_model_name(config.model or "tutorial-cnn")), lambda name: None


def _as_given(config: TrainConfig) -> tuple[TrainConfig, WeightsSource]:
    """A backend that reads ``--model`` as given and has no local pretrained weights."""
    return config, lambda name: None


PREPARE: dict[str, Prepare] = {"torch": _prepare_torch, "tensorflow": _prepare_tensorflow}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or a one-line error listing the registered ones."""
    return Backend(backend_record(name), PREPARE.get(name, _as_given))

