"""``--runtime auto``: the runtime measured fastest for this bundle on this machine; measured once, then remembered.

The candidates are the bundle's own runtime (PyTorch, or Keras) and every
export beside it that is up to date and whose runtime is installed (ONNX
Runtime, OpenVINO): the fp32 files and, where the caller allows them, the
int8 ones. An int8 file exists only when ``imgclf export --quantize int8``
found it within ``--max-accuracy-drop`` of fp32 on the validation images,
so a user who made one has accepted that cost for its speed (OpenVINO int8
ran 1.6-2x its fp32 at batch 64 in ``benchmarks/predict.py``); what measures
the model itself (evaluate, calibrate, the report) leaves int8 out and
chooses among the fp32 runtimes, whose answers match the model's.

Their speeds come from what ``imgclf export`` measured when it ran on this
machine (recorded in each file's metadata, the int8 ones too, with the
machine it ran on), else from an earlier measurement remembered in
``$IMGCLF_HOME/runtime-speeds/<weights sha256>.json``; when a candidate has
no figure for this machine, all are measured now (a few seconds, once) and
remembered there. A speed measured on another machine is never used, and
nothing is guessed: with no export there is nothing to choose.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from imgclf.deploy.metadata import read_export, weights_file_digest
from imgclf.deploy.openvino_runtime import XML
from imgclf.files import write_text_atomic
from imgclf.paths import imgclf_home

log = logging.getLogger(__name__)

SPEED_BATCHES = (1, 64)  # batch sizes ``export`` and the first ``auto`` time every runtime at
Speeds = dict[str, dict[str, float]]  # runtime -> batch size (as text) -> images/s
Measure = Callable[[list[str]], Speeds]  # times the named runtimes of a bundle at SPEED_BATCHES


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says: benchmarks record it beside figures."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def machine() -> str:
    """What a speed was measured on: the CPU model, its logical cores and the host name."""
    return f"{cpu_model()} x{os.cpu_count()} on {platform.node()}"


def usable_exports(directory: Path, files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{runtime: export metadata} of the exports in ``files`` (runtime -> file in the bundle) that are up to date.

    ``files`` names the candidates whose runtime is installed; an OpenVINO
    IR folder also needs its ``model.xml``.
    """
    found: dict[str, dict[str, Any]] = {}
    for runtime, name in files.items():
        path = directory / name
        meta = read_export(directory, path) if path.is_file() or (path / XML).is_file() else None
        if meta is not None:
            found[runtime] = meta
    return found


def choose(directory: Path, native: str, exports: dict[str, dict[str, Any]], batch_size: int, measure: Measure) -> str:
    """The fastest of ``native`` and ``exports`` at the measured batch size nearest ``batch_size``."""
    if not exports:
        return native
    names = [native, *exports]
    speeds = _recorded(exports)
    if not all(name in speeds for name in names):
        speeds = {**speeds, **_remembered(directory)}
    if not all(name in speeds for name in names):
        speeds = measure(names)
        _remember(directory, speeds)
    nearest = str(min(SPEED_BATCHES, key=lambda size: abs(math.log(size) - math.log(max(batch_size, 1)))))
    chosen = max(names, key=lambda name: (speeds[name].get(nearest, 0.0), name == native))
    # said, not silent: the choice may be an int8 file, whose answers are not quite the model's
    log.info(f"runtime {chosen}: the fastest of {', '.join(names)} measured on this machine at batch {nearest} "
             f"({speeds[chosen].get(nearest, 0.0):,.0f} images/s)")
    return chosen


def _recorded(exports: dict[str, dict[str, Any]]) -> Speeds:
    """The speeds ``export`` measured on this machine, from each export's metadata."""
    speeds: Speeds = {}
    for meta in exports.values():
        if meta.get("measured_on") == machine():
            speeds.update({name: value for name, value in meta.get("speed", {}).items() if isinstance(value, dict)})
    return speeds


def _speeds_file(directory: Path) -> Path:
    return imgclf_home() / "runtime-speeds" / f"{weights_file_digest(directory)}.json"


def _remembered(directory: Path) -> Speeds:
    try:
        values = json.loads(_speeds_file(directory).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    mine = values.get(machine()) if isinstance(values, dict) else None
    return mine if isinstance(mine, dict) else {}


def _remember(directory: Path, speeds: Speeds) -> None:
    """Add this machine's measurement to the bundle's file (other machines' stay); a read-only home just forgets."""
    path = _speeds_file(directory)
    try:
        values = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        values = {}
    try:
        write_text_atomic(path, json.dumps({**values, machine(): speeds}, indent=2))
    except OSError:
        pass

