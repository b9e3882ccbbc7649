"""Shared fixtures: an isolated IMGCLF_HOME, small generated image folders, tiny 'pretrained' weights, the one tiny
recipe and the one run trained with it, the test tiers (markers), and the two ways tests run the CLI (in-process, or
as a real subprocess where the process boundary is the behaviour)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import processes
import pytest
from PIL import Image
from processes import CLI_ENV

if TYPE_CHECKING:
    from imgclf.training import TrainResult

CLASS_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches and datasets go to a temporary folder, never the user's home."""
    home = tmp_path_factory.mktemp("imgclf-home")
    monkeypatch.setenv("IMGCLF_HOME", str(home))
    return home


def make_image(path: Path, colour: tuple[int, int, int], size: int = 16, seed: int = 0) -> Path:
    """A noisy image of one dominant colour, saved in the format the suffix names."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_class_folder(root: Path, per_class: int = 10, size: int = 16, suffix: str = ".png", seed: int = 0,
                      colours: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """``root/<class>/<n>.png`` for the colour classes (``colours``, by default three; a name may be a path such as
    ``animals/dog``); a different ``seed`` gives different images."""
    for index, (name, colour) in enumerate((colours or CLASS_COLOURS).items()):
        for number in range(per_class):
            make_image(root / name / f"{number:03d}{suffix}", colour, size, seed=seed * 100_000 + index * 1000 + number)
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data")


def save_pretend_weights(model: str, path: Path, seed: int = 1) -> Path:
    """'Pretrained' weights for ``model`` (any name create_model takes, a stack too): seeded, with a 1000-class head."""
    import torch
    from safetensors.torch import save_file

    from imgclf.models import create_model

    torch.manual_seed(seed)
    save_file({name: tensor.contiguous() for name, tensor in create_model(model, 1000).state_dict().items()},
              str(path))
    return path


@pytest.fixture(scope="session")
def backbone_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'Pretrained' weights for timm's tiny test_resnet."""
    return save_pretend_weights("test_resnet", tmp_path_factory.mktemp("weights") / "test_resnet.safetensors")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the browser tests: skipped where missing, except under CI=true."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI; `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@contextmanager
def browser_page(chromium: str) -> Iterator[tuple[Any, list[str]]]:
    """A headless Chromium page (no background networking) and the URLs it requests, to check none leave the page's
    origin; the browser closes when the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            yield page, requests
        finally:
            browser.close()


# The one tiny recipe: a fastnet small enough that ten epochs on 60 images take seconds. TINY_ARGS is the same recipe
# as `imgclf train` options, so the API and the CLI tests train the same thing.
TINY_FASTNET = dict(model="fastnet", model_args={"widths": [8, 16, 16], "depth": 1}, batch_size=16, lr=0.5,
                    label_smoothing=0.0, precision="fp32", workers=1)


def cli_options(options: Mapping[str, Any]) -> list[str]:
    """``train(**options)`` spelt as command-line options (a dict option as repeated ``--model-arg KEY=VALUE``)."""
    args: list[str] = []
    for name, value in options.items():
        if name == "model_args":
            args += [part for key, item in value.items() for part in ("--model-arg", f"{key}={json.dumps(item)}")]
        else:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


TINY_ARGS = cli_options(TINY_FASTNET)


def untrained_bundle(directory: Path) -> Path:
    """An untrained tiny fastnet bundle (three colour classes, 16 px): for tests where how good the model is does not matter."""
    import torch

    from imgclf.deploy.bundle import BundleInfo, write_bundle
    from imgclf.models import create_model

    torch.manual_seed(0)
    model = create_model("fastnet", 3, image_size=16, widths=[8, 16, 16], depth=1)
    info = BundleInfo("fastnet", {"widths": [8, 16, 16], "depth": 1}, ["blue", "green", "red"], 16,
                      [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    return write_bundle(info, model.state_dict(), directory / "model")


def train_tiny_run(root: Path, epochs: int = 10) -> Path:
    """A tiny fastnet trained on three colour classes: the run directory (the benchmarks' stand-in run)."""
    import imgclf

    data = make_class_folder(root / "data", per_class=20)
    return imgclf.train(data, out=root / "run", epochs=epochs, **TINY_FASTNET).run_dir


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@contextmanager
def _kept_unchanged(folder: Path, copy_hint: str) -> Iterator[Path]:
    """Share ``folder`` across the session and fail at its end if any test wrote to it."""
    before = _files(folder)
    yield folder
    assert _files(folder) == before, f"a test wrote into the shared {folder}: {copy_hint}"


@pytest.fixture(scope="session")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three colour classes, 20 images each (3 training steps an epoch at batch 16): shared, never written to."""
    with _kept_unchanged(make_class_folder(tmp_path_factory.mktemp("colours") / "data", per_class=20),
                         "make a folder of your own with make_class_folder") as folder:
        yield folder


@pytest.fixture(scope="session")
def tiny_training(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """THE tiny training (ten epochs of the tiny recipe on ``colours``), done once a session: what train returned.
    Seconds, paid once in any tier, so the tests that only read it need not be ``slow``."""
    import imgclf
    from imgclf.training import TrainResult

    test, processes.current_test = processes.current_test, None  # exempt from the `slow` check
    try:
        result = imgclf.train(colours, out=tmp_path_factory.mktemp("tiny") / "run", epochs=10, **TINY_FASTNET)
    finally:
        processes.current_test = test
    assert isinstance(result, TrainResult)
    return result


@pytest.fixture(scope="session")
def tiny_run(tiny_training: TrainResult) -> Iterator[Path]:
    """The tiny training's run folder, for the tests that read a trained run; a test or fixture that writes into a
    run takes a copy (:func:`copy_run`)."""
    with _kept_unchanged(tiny_training.run_dir, "write into copy_run(tiny_run, ...) instead") as shared:
        yield shared


class FakeClock:
    """A clock that moves only when read (``tick`` seconds a reading) or advanced: the same run on any machine.

    The ticks stand for the machine's own speed (the opening measurement
    reads the clock once a step, so it measures ``tick`` a step); what a
    test advances stands for a machine slower than that.
    """

    def __init__(self, tick: float = 0.02) -> None:
        self.tick, self.time = tick, 0.0

    def __call__(self) -> float:
        self.time += self.tick
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock every budget reading of a run made in this test uses (``--time-budget``'s seconds, the epochs'
    seconds): a test that trains against time reads this, never the wall clock."""
    fake = FakeClock()
    from imgclf.engines import budget

    monkeypatch.setattr(budget, "CLOCK", fake)
    return fake


def copy_run(run: Path, directory: Path) -> Path:
    """A copy of ``run`` in ``directory``, for a test that writes into it (exports, evaluations, a new report)."""
    return Path(shutil.copytree(run, directory / run.name, symlinks=True))


@contextmanager
def _process_state_restored() -> Iterator[None]:
    """Put back what a command may change in the process, so the next test sees what a fresh interpreter would."""
    import numpy
    import torch

    from imgclf.console import console

    cwd, argv, environ = os.getcwd(), sys.argv[:], dict(os.environ)
    handlers = {kind: signal.getsignal(kind) for kind in (signal.SIGINT, signal.SIGTERM)}
    root, disabled = logging.getLogger(), logging.root.manager.disable
    log_handlers, log_level = root.handlers[:], root.level
    threads = torch.get_num_threads()
    rng = (torch.random.get_rng_state(), numpy.random.get_state(), random.getstate())
    width = console._width  # Rich reads COLUMNS only when no width was fixed at its creation
    console._width = None
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(cwd)
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        for kind, handler in handlers.items():
            signal.signal(kind, handler)
        logging.disable(disabled)
        root.handlers[:], root.level = log_handlers, log_level
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng[0])
        numpy.random.set_state(rng[1])
        random.setstate(rng[2])
        console._width = width


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``imgclf ARGS`` in this process, through the console script's own entry function (``imgclf.cli.main``: its
    one-line errors and exit codes included); stdout, stderr and the exit code as a subprocess would give them.

    An exception that escapes ``main`` becomes what Python prints for it, a traceback on stderr and exit code 1, so
    "no traceback" checks mean the same as with a subprocess. Several times faster than a subprocess (no import of
    torch and timm each time); use :func:`run_process` where the process itself is under test (signals, exit of a
    fresh interpreter, the installed command).
    """
    from typer.testing import CliRunner

    from imgclf.cli import main
    from imgclf.files import PATH_BYTES

    with _process_state_restored(), CliRunner().isolation(input=stdin, env={**CLI_ENV, **(env or {})}) as streams:
        sys.argv[:] = ["imgclf", *args]
        if cwd is not None:
            os.chdir(cwd)
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except Exception:  # what the interpreter would do with it, kept for the test to see
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = (stream.getvalue().decode("utf-8", errors=PATH_BYTES) for stream in streams[:2])
    return subprocess.CompletedProcess(["imgclf", *args], code, stdout, stderr)


def run_process(*args: str, cwd: Path | None = None, stdin: str | None = None, env: Mapping[str, str] | None = None,
                timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m imgclf ARGS`` as a real subprocess: for what only a fresh process shows."""
    return processes.run_python("-m", "imgclf", *args, cwd=cwd, stdin=stdin, env=env, timeout=timeout)


def interrupt_training(args: list[str], run: Path, ready: Path, wait_s: float = 90,
                       env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Start ``imgclf train ARGS --out RUN``, press Ctrl-C once ``ready`` exists; (exit code, stderr)."""
    process = processes.start_python("-m", "imgclf", "train", *args, "--out", str(run), env=env)
    processes.wait_until(ready.exists, process, f"{ready.name} of the run to interrupt", timeout_s=wait_s)
    return processes.stop(process, signal.SIGINT, timeout_s=120)


# Test tiers (markers registered in pyproject.toml; `make test-fast` leaves out every marked test). Applied so they
# stay true as tests are added: `browser` here, for every test that takes the `chromium` fixture; `subprocess` and
# `slow` are checked when a test starts a process (processes.py) or trains a model (below), failing an unmarked
# test; `tensorflow` and `distributed` are set by the tests themselves, and `tensorflow` also skips the test where
# the extra is missing. find_spec, not importorskip: importing TensorFlow
# before torchvision would crash the process (imgclf/models/keras_setup.py).
NO_TENSORFLOW = importlib.util.find_spec("tensorflow") is None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
        if NO_TENSORFLOW and item.get_closest_marker("tensorflow") is not None:
            item.add_marker(pytest.mark.skip(reason="the TensorFlow extra is not installed "
                                                    "(pip install 'imgclf[tensorflow]')"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    processes.current_test = item  # before the test's fixtures, which may start processes or train too


@pytest.fixture(scope="session", autouse=True)
def training_is_slow() -> Iterator[None]:
    """A test that trains must be marked ``slow`` (or be in another tier `make test-fast` leaves out: subprocess,
    tensorflow, distributed): checked where training decodes its data, after the options were checked (so a test of
    a refused option is no training) and whether the training is the test's own or a shared fixture's (every test
    that uses such a fixture trains when it runs alone)."""
    from imgclf import training

    decode = training._decode

    def checked(*args: Any, **kwargs: Any) -> Any:
        processes.require_marker("slow", "trains a model", or_any=("subprocess", "tensorflow", "distributed"))
        return decode(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_decode", checked)
        yield
