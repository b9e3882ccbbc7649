"""Data-parallel training as a user runs it: `imgclf train --nproc 2` (torchrun's own agent, 2 gloo processes).

One interrupted 2-process run is shared by the assertions (torchrun and two
torch imports cost seconds): rank 0 alone printed and wrote, both ranks
ended with the same weights, and its checkpoint resumes in one process and
finishes with exactly the optimiser steps one process takes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, interrupt_training, make_class_folder, run_cli

from imgclf.data.augment_presets import PRESETS
from imgclf.data.batches import BatchLoader
from imgclf.distributed import World, tensors_digest
from imgclf.engines.checkpoint import load_checkpoint

EPOCHS = 400  # far more than the run lasts: it is interrupted once its first epoch is written
# the whitening bias freezes from the second step on: the ranks' step module must be made again then
RECIPE = [*TINY_ARGS, "--ema", "--mixup", "0.2", "--whitening-bias-epochs", "0.5"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, str]:
    """(data, run, exit code, stderr) of a 2-process run stopped by Ctrl-C after its first epoch."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_class_folder(root / "data", per_class=14)
    run = root / "run"
    code, stderr = interrupt_training([str(data), "--epochs", str(EPOCHS), "--nproc", "2", *RECIPE], run,
                                      ready=run / "metrics.csv", wait_s=120, env={"OMP_NUM_THREADS": "1"})
    return data, run, code, stderr


@pytest.mark.distributed
@pytest.mark.subprocess
def test_ctrl_c_stops_every_rank_and_rank_0_alone_prints_and_writes(interrupted) -> None:
    _, run, code, stderr = interrupted
    assert code == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.count("training fastnet") == 1 and "x 2 processes" in stderr
    assert stderr.count("epoch 1 (train)") == 1
    assert f"imgclf train --resume {run}" in stderr
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert not (run / "model").exists()


@pytest.mark.distributed
@pytest.mark.subprocess
def test_both_ranks_end_with_the_weights_rank_0_checkpointed(interrupted) -> None:
    _, run, _, stderr = interrupted
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert f"2 processes ended with the same weights (sha256 {tensors_digest(checkpoint['model'])[:16]})" in stderr


@pytest.mark.distributed
@pytest.mark.subprocess
def test_a_two_process_checkpoint_resumes_in_one_process_with_one_process_steps(interrupted) -> None:
    data, run, _, _ = interrupted
    done = len(list(csv.DictReader(open(run / "metrics.csv"))))
    assert 1 <= done < EPOCHS
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(f"epochs: {EPOCHS}.0", f"epochs: {done + 1}.0"))  # finish soon
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == list(range(1, done + 2))
    # 42 images: 34 train; global batch 16, the ragged one dropped: 2 steps per epoch, in 1 process or 2
    train = len([line for line in (run / "split.csv").read_text().splitlines() if ",train" in line])
    position = load_checkpoint(run / "checkpoints" / "last.pt")["position"]
    assert position["stage_step"] == (done + 1) * (train // 16)
    assert (run / "model" / "weights.safetensors").is_file()


def test_each_rank_reads_its_share_of_every_global_batch_in_the_same_order() -> None:
    pixels = np.arange(37 * 2 * 2 * 3, dtype=np.uint8).reshape(37, 2, 2, 3)
    rows = np.arange(37)[::-1].copy()
    targets = torch.arange(37)

    def batches(world: World) -> list[list[int]]:
        loader = BatchLoader(pixels, rows, targets, 8, PRESETS["none"], (0.0,) * 3, (1.0,) * 3, drop_last=True,
                             seed=3, world=world)
        loader.set_epoch(2)
        return [batch_targets.tolist() for _, batch_targets in loader]

    alone, first, second = batches(World()), batches(World(0, 2)), batches(World(1, 2))
    assert len(first) == len(second) == len(alone) == 37 // 8
    assert [a + b for a, b in zip(first, second)] == alone


def test_nproc_with_the_keras_engine_is_a_one_line_error_naming_the_torch_backend(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=4)
    result = run_cli("train", str(data), "--out", str(tmp_path / "run"), "--nproc", "2", "--backend", "tensorflow")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "--backend tensorflow cannot train in 2 processes (torchrun, --nproc); train with --backend torch" \
        in result.stderr
    assert not (tmp_path / "run").exists()
