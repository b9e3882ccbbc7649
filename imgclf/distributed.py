"""torch.distributed in one place: which process this is, the process group, and torchrun.

A run launched by ``torchrun`` (or ``imgclf ... --nproc N``, which starts
torchrun for the user) has ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment; a plain run has none and is a world of one, so every caller can
ask the same questions (am I rank 0? which share of the items is mine?)
whether or not it is distributed. The backend follows the device: nccl on
CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imgclf.errors import ImgclfError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes metrics, checkpoints, bundles and reports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def share(self, count: int) -> range:
        """This rank's contiguous block of ``count`` items; the blocks of ranks 0..N-1 concatenate to 0..count-1."""
        start = count * self.rank // self.size
        return range(start, count * (self.rank + 1) // self.size)


def current_world() -> World:
    """The world torchrun describes in the environment, or a world of one."""
    try:
        return World(rank=int(os.environ.get("RANK", 0)), size=int(os.environ.get("WORLD_SIZE", 1)),
                     local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ImgclfError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start distributed runs "
                          "with torchrun or --nproc") from None


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def start(device: torch.device | str) -> World:
    """Join the process group (once) when the world has more than one process; return the world."""
    world = current_world()
    if world.is_distributed and not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
    return world


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank arrives (a no-op in a world of one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def torchrun_command(nproc: int, arguments: Sequence[str]) -> list[str]:
    """The command that runs ``imgclf ARGUMENTS`` as ``nproc`` processes on this machine under torchrun."""
    if nproc < 1:
        raise ImgclfError(f"--nproc {nproc} must be at least 1 (the number of processes on this machine)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "imgclf", *arguments]


def without_nproc(arguments: Sequence[str]) -> list[str]:
    """``arguments`` less ``--nproc N`` / ``--nproc=N``: what each torchrun child runs (it must not launch again)."""
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            kept.append(argument)
    return kept


def launch(nproc: int, arguments: Sequence[str]) -> int:
    """Run ``imgclf ARGUMENTS`` (this command line, ``--nproc`` removed) as ``nproc`` torchrun processes; the exit code."""
    if current_world().is_distributed:
        raise ImgclfError("--nproc is for starting a run; this process is already one rank of a torchrun job")
    return subprocess.call(torchrun_command(nproc, without_nproc(arguments)))
