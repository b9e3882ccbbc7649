"""The world a process sees: torchrun's environment, or a world of one."""

import pytest

from imgclf.distributed import World, current_world, torchrun_command, without_nproc
from imgclf.errors import ImgclfError


def test_a_plain_process_is_a_world_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = current_world()
    assert world == World() and world.is_main and not world.is_distributed


def test_torchrun_environment_is_read(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = current_world()
    assert (world.rank, world.size, world.local_rank) == (3, 4, 1) and not world.is_main


@pytest.mark.parametrize("count, size", [(0, 2), (1, 2), (10, 3), (1001, 4), (7, 7)])
def test_shares_are_contiguous_and_cover_every_item_once(count, size):
    shares = [World(rank, size).share(count) for rank in range(size)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_nproc_below_one_is_a_one_line_error():
    with pytest.raises(ImgclfError, match="--nproc 0"):
        torchrun_command(0, ["train", "data"])
    assert torchrun_command(2, ["train", "data"])[-3:] == ["imgclf", "train", "data"]


def test_children_run_the_command_line_without_nproc():
    assert without_nproc(["train", "data", "--nproc", "2", "--epochs", "1"]) == ["train", "data", "--epochs", "1"]
    assert without_nproc(["predict", "--nproc=4", "m", "x.jpg"]) == ["predict", "m", "x.jpg"]
