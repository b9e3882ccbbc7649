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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from imgclf.errors import ImgclfError, one_line


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


ALONE = World()  # a plain process: a world of one


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
        transport = backend_for(device)  # torch's process-group backend, not imgclf's --backend
        if transport == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=transport)
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
        group = dist.new_group(backend="gloo")
        assert isinstance(group, dist.ProcessGroup)  # every rank is in a group of all ranks
        _control_group.append(group)
    return _control_group[0]


def wait_for_ranks(timeout: timedelta = WAIT_FOR_RANKS) -> None:
    """A barrier that names the ranks that did not arrive within ``timeout`` instead of waiting silently."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.monitored_barrier(group=_control(), timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:
        raise ImgclfError(f"rank {dist.get_rank()}: the other ranks did not all arrive within {timeout} "
                          f"({one_line(error)}); see their output, then run the same command again "
                          "(finished parts are kept)") from None


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
    """Run ``imgclf ARGUMENTS`` (this command line, ``--nproc`` removed) as ``nproc`` torchrun processes; the exit code.

    This process becomes torchrun's agent (``torch.distributed.run``, as the
    ``torchrun_command`` line would start it, with its ``--standalone``
    rendezvous) rather than its parent, so that a rank's failure is the
    rank's own one-line error and exit code instead of torchrun's traceback
    report, and Ctrl-C is torchrun's: the ranks get it (and then torchrun's
    SIGTERM), stop after the same step and exit 130. When a rank dies
    (killed, out of memory) the agent stops the others and this says so in
    one line. Each process gets an equal share of the CPU threads unless
    OMP_NUM_THREADS says.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if current_world().is_distributed:
        raise ImgclfError("--nproc is for starting a run; this process is already one rank of a torchrun job")
    command = torchrun_command(nproc, without_nproc(arguments))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)  # its warnings repeat, as tracebacks, what the ranks printed
    try:
        run(parse_args(command[3:]))
    except ChildFailedError as failed:
        codes = [failure.exitcode for failure in failed.failures.values()]
        if 130 in codes:
            return 130
        if 2 in codes:  # an ImgclfError: the rank printed its one line
            return 2
        rank, failure = failed.get_first_failure()
        raise ImgclfError(f"rank {rank} of {nproc} stopped (exit code {failure.exitcode}; its output is above) and "
                          "the others were stopped; run the same command again: a training run resumes with "
                          "--resume, predict and embed keep their finished parts") from None
    except (SignalException, KeyboardInterrupt):
        return 130
    finally:
        agent_log.setLevel(level)
    return 0


# --------------------------------------------------------------------------- training's collectives
# A world of one answers every question itself, so callers never test for distribution.

T = TypeVar("T")


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (run paths, budget-fitted configs, errors: small picklable objects)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_in_rank_order(value: T) -> list[T]:
    """Every rank's ``value``, rank 0's first (each rank's share of an embedding pass, concatenated in order)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def agree(interrupted: bool, stop: bool, device: torch.device | str) -> tuple[bool, bool]:
    """(any rank was interrupted, rank 0 decided to stop): one small all-reduce, so every rank acts alike.

    Ctrl-C reaches each rank at its own moment (torchrun forwards SIGINT), so
    any rank's interrupt stops all of them at the same step; a stop (time
    budget, early stopping) is rank 0's decision, since its callbacks alone
    watch the clock and the validation scores.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return interrupted, stop
    flags = torch.tensor([float(interrupted), float(stop and dist.get_rank() == 0)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def sum_across(values: Sequence[float], device: torch.device | str) -> list[float]:
    """The element-wise sum of ``values`` over the ranks (an epoch's loss, correct and seen counts)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def share_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DistributedDataParallel averages gradients, so parameters agree, and it
    copies rank 0's buffers at the start of each forward pass; after the
    last step each rank still holds statistics of its own share.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and tensor bytes, in order: equal digests, equal weights in memory
    (not :func:`imgclf.deploy.metadata.weights_file_digest`, which hashes a written file's bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def same_weights_everywhere(state: dict[str, torch.Tensor]) -> str:
    """The digest of ``state``, checked to be every rank's: data-parallel ranks that diverged are a bug, said so."""
    digest = tensors_digest(state)
    digests = gather_in_rank_order(digest)
    if len(set(digests)) > 1:
        raise ImgclfError(f"the {len(digests)} processes ended with different weights ({', '.join(map(str, digests))}"
                          "); please report this with the command line")
    return digest
