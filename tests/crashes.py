"""Crash helpers for the reliability tests and benchmarks: ``kill -9`` a training run at a chosen moment, limit file sizes.

A training run is started as its own process (``python -c`` on
:func:`imgclf.training.train`, without the HTML report so a trial takes
seconds) and killed with SIGKILL, which no handler can catch: whatever is on
disk at that instant is all a resume gets. Moments are picked by watching
the run folder: the split file appearing (decoding starts), a checkpoint's
or the bundle's temporary name appearing (a write in progress), or a delay.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from processes import start_python

TRAIN_SNIPPET = """
import json, sys
from imgclf.config import make_config
from imgclf.training import train
options = json.loads(sys.argv[1])
train(make_config(**options))
"""

# what a moment waits for, in the run folder, before the kill; None: only the delay
MOMENTS: dict[str, Callable[[Path], bool] | None] = {
    "decode": lambda run: (run / "split.csv").exists(),
    "step": None,
    "checkpoint write": lambda run: any(name.startswith(".last.pt.tmp") or name.startswith(".best.pt.tmp")
                                        for name in _names(run / "checkpoints")),
    "bundle write": lambda run: any(name.startswith(".model.tmp") for name in _names(run)),
}


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def start_training(options: dict[str, object], env: dict[str, str] | None = None,
                   preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    """``imgclf.training.train(**options)`` in a child process (no report), stderr captured."""
    return start_python("-c", TRAIN_SNIPPET, json.dumps(options), env=env, preexec_fn=preexec_fn)


def kill_at(options: dict[str, object], moment: str, delay_s: float = 0.0, timeout_s: float = 120.0) -> bool:
    """Train with ``options`` and SIGKILL the process at ``moment`` (+ ``delay_s``); False if it finished first."""
    run = Path(str(options["out"]))
    process = start_training(options)
    ready = MOMENTS[moment]
    deadline = time.monotonic() + timeout_s
    while not (run / "split.csv").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # the run folder exists: from here on, a resume must always work
    while ready is not None and not ready(run) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(delay_s)
    finished = process.poll() is not None
    process.kill()
    process.communicate(timeout=60)
    return not finished


def bundle_weights(run: Path) -> dict[str, np.ndarray]:
    """The shipped weights of a finished run, as numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(str(run / "model" / "weights.safetensors"))


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and folders of interrupted atomic writes under ``folder``."""
    return sorted(path for path in folder.rglob(".*") if ".tmp-" in path.name or ".old-" in path.name)


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps every file the child writes at ``limit_bytes`` (RLIMIT_FSIZE).

    SIGXFSZ is ignored, so a write past the cap fails with EFBIG (as a full
    disk fails with ENOSPC) instead of killing the process.
    """

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return limit
