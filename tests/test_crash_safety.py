"""Killed runs and full disks: ``kill -9`` at any moment resumes to the same weights; a write that runs out of space
fails with one line and costs nothing that was written before. (The 20-trial loop is benchmarks/kill_resume.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_FASTNET, make_class_folder
from crashes import bundle_weights, file_size_limit, kill_at, leftovers, same_weights
from processes import run_python

from imgclf.config import make_config
from imgclf.deploy.bundle import BundleInfo, write_bundle
from imgclf.engines.checkpoint import load_checkpoint, save_checkpoint
from imgclf.errors import ImgclfError
from imgclf.files import disk_error
from imgclf.training import train

LIMIT = 20_000  # bytes: above config, split and metrics files, below a checkpoint and the bundle's weights


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash-home")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("crash-data") / "data", per_class=10)


def options(data: Path, out: Path) -> dict[str, object]:
    return {**TINY_FASTNET, "data": str(data), "out": str(out), "epochs": 3, "seed": 3}


@pytest.fixture(scope="module")
def reference(home: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: the weights every interrupted one must end with."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_HOME", str(home))
        return train(make_config(**options(data, tmp_path_factory.mktemp("reference") / "run"))).run_dir


def resume(run: Path) -> None:
    train(make_config(), resume=run)


@pytest.mark.subprocess
@pytest.mark.parametrize("moment,delay_s", [("step", 1.0), ("checkpoint write", 0.0)])
def test_kill_9_at_any_moment_then_resume_ends_with_the_same_weights(
        reference: Path, home: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        moment: str, delay_s: float) -> None:
    monkeypatch.setenv("IMGCLF_HOME", str(home))
    run = tmp_path / "run"
    kill_at(options(data, run), moment, delay_s)
    resume(run)
    assert same_weights(bundle_weights(run), bundle_weights(reference))
    assert leftovers(run) == []


def test_a_checkpoint_whose_weights_do_not_match_its_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(4.0)}, "epoch": 1}, path)
    assert load_checkpoint(path)["model"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    state = torch.load(path, weights_only=True)
    state["model"]["w"][0] = 9.0  # as bit rot or a bad copy would change it, checksum untouched
    torch.save(state, path)
    with pytest.raises(ImgclfError, match="damaged .*do not match the checksum"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:200])  # half a file
    with pytest.raises(ImgclfError, match="not a readable imgclf checkpoint"):
        load_checkpoint(path)


def run_limited(args: list[str], limit: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with every file it writes capped at ``limit`` bytes."""
    return run_python(*args, timeout=120, env=env, preexec_fn=file_size_limit(limit))


@pytest.mark.subprocess
def test_checkpoint_and_bundle_writes_past_a_size_limit_fail_and_keep_the_previous_files(tmp_path: Path) -> None:
    save_checkpoint({"model": {"w": torch.zeros(4)}}, tmp_path / "last.pt")
    write_bundle(BundleInfo("fastnet", {}, ["a"], 8, [0.5], [0.5]), {"w": torch.zeros(4)}, tmp_path / "model")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    code = ("import torch; from pathlib import Path; from imgclf.engines.checkpoint import save_checkpoint; "
            "from imgclf.deploy.bundle import BundleInfo, write_bundle; from imgclf.files import disk_error; "
            f"folder = Path({str(tmp_path)!r}); big = {{'w': torch.zeros(100_000)}}\n"
            "for write in (lambda: save_checkpoint({'model': big}, folder / 'last.pt'), "
            "lambda: write_bundle(BundleInfo('fastnet', {}, ['a'], 8, [0.5], [0.5]), big, folder / 'model')):\n"
            "    try: write()\n"
            "    except OSError as error: print(disk_error(error))\n")
    result = run_limited(["-c", code], 50_000, {})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    assert all(line.startswith("cannot write ") and "File too large" in line for line in lines), lines
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert leftovers(tmp_path) == []


def test_disk_error_reads_as_one_line_only_for_lack_of_space() -> None:
    assert disk_error(OSError(28, "No space left on device", "runs/x/last.pt")) is not None
    assert disk_error(OSError(2, "No such file or directory")) is None


def run_files(run: Path) -> dict[Path, bytes]:
    """Every file of a run but TensorBoard's logs (each start opens a new one, by design)."""
    return {path: path.read_bytes() for path in run.rglob("*") if path.is_file() and "tensorboard" not in path.parts}


@pytest.mark.subprocess
def test_train_past_a_size_limit_fails_with_one_line_and_the_next_run_starts_cleanly(
        reference: Path, home: Path, tmp_path: Path) -> None:
    """Resuming a finished run rewrites its bundle: under the limit that fails with one line and changes nothing;
    once the limit is lifted the same command succeeds, with the uninterrupted run's weights."""
    finished = tmp_path / "finished"
    shutil.copytree(reference, finished, symlinks=True)  # as `cp -a`: links and file times kept
    before = run_files(finished)
    result = run_limited(["-m", "imgclf", "train", "--resume", str(finished)], LIMIT, {"IMGCLF_HOME": str(home)})
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines) == 1 and "File too large" in error_lines[0] and "model" in error_lines[0], error_lines
    assert leftovers(finished) == [] and run_files(finished) == before
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_HOME", str(home))
        resume(finished)
    assert same_weights(bundle_weights(finished), bundle_weights(reference))
