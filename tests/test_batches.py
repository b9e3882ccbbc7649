"""BatchLoader: every row once per epoch, aligned targets, seeded order, clean shutdown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf.data.augment_presets import PRESETS
from imgclf.data.batches import BatchLoader


def loader(n: int = 50, batch_size: int = 8, **kwargs) -> BatchLoader:
    # each row's pixels hold its own row number, so a batch shows which rows it holds
    pixels = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    rows = np.arange(n)[::-1].copy()  # rows in another order than the targets' positions
    targets = torch.from_numpy(rows.copy())
    return BatchLoader(pixels, rows, targets, batch_size, PRESETS["none"], (0.0,) * 3, (1 / 255,) * 3, **kwargs)


def rows_seen(batches) -> list[int]:
    return [int(v) for images, _ in batches for v in images[:, 0, 0, 0].round().tolist()]


def test_each_epoch_sees_every_row_once_with_its_target() -> None:
    data = loader()
    for images, targets in data:
        assert images.shape[1:] == (3, 4, 4)
        torch.testing.assert_close(images[:, 0, 0, 0], targets.float())
    assert sorted(rows_seen(data)) == list(range(50))
    assert len(data) == 7


def test_order_depends_on_seed_and_epoch_and_is_reproducible() -> None:
    first = loader(seed=1)
    epoch0, epoch1 = rows_seen(first), rows_seen(first)
    assert epoch0 != epoch1
    again = loader(seed=1)
    again.set_epoch(1)
    assert rows_seen(again) == epoch1
    assert rows_seen(loader(seed=2)) != epoch0
    assert rows_seen(loader(shuffle=False)) == list(range(49, -1, -1))


def test_drop_last() -> None:
    data = loader(drop_last=True)
    assert len(data) == 6 and len(rows_seen(data)) == 48


def test_leaving_early_and_errors_do_not_hang() -> None:
    data = loader(n=200, batch_size=2)
    for _ in data:
        break
    broken = loader()
    broken.pixels = np.zeros((1, 4, 4, 3), dtype=np.uint8)  # rows point past the end
    with pytest.raises(IndexError):
        list(broken)
