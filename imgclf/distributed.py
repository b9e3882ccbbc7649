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
    """Run ``imgclf ARGUMENTS`` (this command line, ``--nproc`` removed) as ``nproc`` torchrun processes; the exit code.

    This process becomes torchrun's agent (``torch.distributed.run``, as the
    ``torchrun_command`` line would start it) rather than its parent, so that
    a rank's failure is the rank's own one-line error and exit code instead of
    torchrun's traceback, and Ctrl-C is torchrun's: the ranks get it (and
    then torchrun's SIGTERM), stop after the same step and exit 130. Each
    process gets an equal share of the CPU threads unless OMP_NUM_THREADS says.
    """
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if current_world().is_distributed:
        raise ImgclfError("--nproc is for starting a run; this process is already one rank of a torchrun job")
    command = torchrun_command(nproc, without_nproc(arguments))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the ranks say what went wrong
    try:
        run(parse_args(command[3:]))
    except ChildFailedError as failed:
        codes = [failure.exitcode for failure in failed.failures.values()]
        return 130 if 130 in codes else max(max(codes), 1)  # a rank killed by a signal has a negative code
    except (SignalException, KeyboardInterrupt):
        return 130
    return 0


# --------------------------------------------------------------------------- training's collectives
# A world of one answers every question itself, so callers never test for distribution.

def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (run paths, budget-fitted configs, errors: small picklable objects)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_in_rank_order(value: object) -> list[object]:
    """Every rank's ``value``, rank 0's first (each rank's share of an embedding pass, concatenated in order)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
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


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and tensor bytes, in order: equal digests, equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def same_weights_everywhere(state: dict[str, torch.Tensor]) -> str:
    """The digest of ``state``, checked to be every rank's: data-parallel ranks that diverged are a bug, said so."""
    digest = weights_digest(state)
    digests = gather_in_rank_order(digest)
    if len(set(digests)) > 1:
        raise ImgclfError(f"the {len(digests)} processes ended with different weights ({', '.join(map(str, digests))}"
                          "); please report this with the command line")
    return digest


def require_devices(nproc: int, device: str) -> None:
    """A one-line error when ``nproc`` processes cannot each have the ``device`` they ask for (one GPU each)."""
    visible = torch.cuda.device_count()
    if device == "cuda" or (device == "auto" and visible):
        if visible < nproc:
            raise ImgclfError(f"--nproc {nproc} with --device cuda needs {nproc} GPUs (one per process) but "
                              f"{visible} {'is' if visible == 1 else 'are'} visible; use --nproc {max(visible, 1)} "
                              f"or --device cpu")
