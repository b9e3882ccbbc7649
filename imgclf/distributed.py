"""torch.distributed in one place: which process this is, the process group, and torchrun.

A run launched by ``torchrun`` (or ``imgclf ... --nproc N``, which starts
torchrun for the user) has ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment; a plain run has none and is a world of one, so every caller can
ask the same questions (am I rank 0? which share of the items is mine?)
whether or not it is distributed. The backend follows the device: nccl on
CUDA, gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

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


# How long the ranks that finished wait for the others (a resumed job's shares are balanced, so this is slack for
# slower machines); a rank that dies is seen sooner: torchrun then stops the whole job.
WAIT_FOR_RANKS = timedelta(hours=2)
_control_group: list[dist.ProcessGroup] = []  # a gloo group for small messages when the main backend is nccl


def _control() -> dist.ProcessGroup | None:
    """The group for barriers and lists of numbers: the default one on gloo, else a gloo group made once (collectively)."""
    if dist.get_backend() == "gloo":
        return None
    if not _control_group:
        _control_group.append(dist.new_group(backend="gloo"))
    return _control_group[0]


def wait_for_ranks(timeout: timedelta = WAIT_FOR_RANKS) -> None:
    """A barrier that names the ranks that did not arrive within ``timeout`` instead of waiting silently."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.monitored_barrier(group=_control(), timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:
        raise ImgclfError(f"rank {dist.get_rank()}: the other ranks did not all arrive within {timeout} "
                          f"({str(error).splitlines()[0]}); see their output, then run the same command again "
                          "(finished parts are kept)") from None


def broadcast_numbers(numbers: Sequence[int]) -> list[int]:
    """Rank 0's list of whole numbers on every rank (what other ranks pass is ignored)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(numbers)
    group = _control()
    length = torch.tensor([len(numbers)], dtype=torch.int64)
    dist.broadcast(length, src=0, group=group)
    values = torch.tensor(list(numbers), dtype=torch.int64) if dist.get_rank() == 0 else \
        torch.zeros(int(length.item()), dtype=torch.int64)
    dist.broadcast(values, src=0, group=group)
    return values.tolist()


def rank_device(requested: str, world: World) -> str:
    """The device this rank runs on: ``auto`` resolved, and its own GPU (``cuda:LOCAL_RANK``) when that is CUDA."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cpu" or (requested == "auto" and not gpus):
        return "cpu"
    if not world.is_distributed:
        return "cuda" if requested == "auto" else requested
    if requested not in ("auto", "cuda"):
        raise ImgclfError(f"--device {requested}: a distributed run gives each process its own GPU; "
                          "use --device cuda, cpu or auto")
    if world.local_rank >= gpus:
        raise ImgclfError(f"--device {requested}: {world.local_rank + 1} processes on this machine but {gpus} "
                          f"GPU(s); start at most {gpus} per machine (--nproc / --nproc_per_node) or use --device cpu")
    return f"cuda:{world.local_rank}"


def check_nproc_device(nproc: int, requested: str) -> None:
    """Refuse, before starting anything, ``nproc`` processes on a device that cannot hold one each."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and not gpus:
        raise ImgclfError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if requested in ("cuda", "auto") and gpus and nproc > gpus:
        raise ImgclfError(f"--nproc {nproc} with --device {requested}: this machine has {gpus} GPU(s), one per "
                          f"process; give --nproc {gpus} or --device cpu")
    if requested not in ("auto", "cuda", "cpu"):
        raise ImgclfError(f"--device {requested} with --nproc: each process gets its own GPU or the CPU; "
                          "use --device cuda, cpu or auto")


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
    """Run ``imgclf ARGUMENTS`` (this command line, ``--nproc`` removed) as ``nproc`` processes; the exit code.

    This process is torchrun's agent (``elastic_launch``, torchrun's
    ``--standalone`` rendezvous): it starts the ranks, and when one fails
    stops the others and answers one line instead of torchrun's report.
    """
    if current_world().is_distributed:
        raise ImgclfError("--nproc is for starting a run; this process is already one rank of a torchrun job")
    torchrun_command(nproc, arguments)  # the same check of nproc
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun would give each rank one thread; a share of the cores keeps a CPU busy with fewer processes
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)  # its warnings repeat, as tracebacks, what the ranks printed
    try:
        elastic_launch(config, sys.executable)("-m", "imgclf", *without_nproc(arguments))
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode == 2:  # an ImgclfError: the rank printed its one line
            return 2
        raise ImgclfError(f"rank {rank} of {nproc} stopped (exit code {failure.exitcode}; its output is above) and "
                          "the others were stopped; run the same command again: finished parts are kept") from None
    except SignalException:
        return 130
    finally:
        agent_log.setLevel(level)
    return 0
