"""Every child process the tests (and the benchmarks that borrow their helpers) start: one place that builds the
command line and environment, waits for a moment without busy loops of its own, and checks the test is marked.

A test that starts a process must carry ``@pytest.mark.subprocess`` (``make test-fast`` leaves those out: each
child imports torch afresh, seconds apiece). The check runs here, when the process starts, so the marker stays
true as tests are added: an unmarked test that launches one fails and names the marker (conftest.py checks
``slow`` the same way, when a test trains). Outside pytest (the benchmarks) there is no test to check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

CLI_ENV = {"COLUMNS": "200"}  # wide enough that no one-line message wraps

current_test: Any = None  # the pytest item running now (conftest sets it); None outside pytest


def require_marker(marker: str, doing: str, or_any: tuple[str, ...] = ()) -> None:
    """Fail the running test unless it carries ``marker`` (or one of ``or_any``), the tier of what it is ``doing``."""
    if current_test is not None and not any(current_test.get_closest_marker(name) for name in (marker, *or_any)):
        raise AssertionError(f"{current_test.nodeid} {doing}: mark it @pytest.mark.{marker} "
                             "(make test-fast leaves such tests out)")


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **CLI_ENV, **(env or {})}


def run_python(*args: str, cwd: Path | None = None, stdin: str | None = None, env: Mapping[str, str] | None = None,
               timeout: float = 240, errors: str = "strict",
               preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` to the end, stdout and stderr captured as text (``errors``: how undecodable bytes read)."""
    require_marker("subprocess", "starts a child process")
    return subprocess.run([sys.executable, *args], capture_output=True, encoding="utf-8", errors=errors, cwd=cwd,
                          env=_environment(env), input=stdin, preexec_fn=preexec_fn,
                          timeout=timeout)  # a hang guard: a slow CI machine is no hang


def run_shell(line: str, cwd: Path, env: Mapping[str, str], timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """A shell command line as a user types it (a guide's commands), in ``cwd`` with exactly ``env``; output captured."""
    require_marker("subprocess", "starts a child process")
    return subprocess.run(line, shell=True, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout)


def start_python(*args: str, env: Mapping[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    """``python ARGS`` in the background (a server, a run to interrupt); stderr piped (what tests read), stdout
    discarded."""
    require_marker("subprocess", "starts a child process")
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_environment(env), preexec_fn=preexec_fn)


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[str], what: str, timeout_s: float = 120,
               poll_s: float = 0.05) -> None:
    """Return once ``ready()`` holds; fail naming ``what`` if the process ended first or ``timeout_s`` passed (a hang
    guard, never a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"{what}: the process ended first (exit {process.returncode})"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(poll_s)


def stop(process: subprocess.Popen[str], signal_number: int, timeout_s: float = 60) -> tuple[int, str]:
    """Send ``signal_number`` and wait for the end: (exit code, stderr)."""
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stderr


def start_serving(model: Path, *options: str, env: Mapping[str, str] | None = None,
                  preexec_fn: Callable[[], None] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``imgclf serve MODEL OPTIONS`` in a process of its own on a free loopback port, once it answers: (process, URL)."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    process = start_python("-m", "imgclf", "serve", str(model), "--port", url.rsplit(":", 1)[1], *options, env=env,
                           preexec_fn=preexec_fn)

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, process, "imgclf serve coming up", timeout_s=180, poll_s=0.2)  # a loaded CI machine
    except BaseException:
        process.kill()
        process.communicate(timeout=30)
        raise
    return process, url
