"""BatchLoader: every row once per epoch, aligned targets, seeded order, clean shutdown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf.data.augment_presets import PRESETS, augment_config
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


def test_resuming_mid_epoch_gives_the_same_augmented_batches() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    make = lambda: BatchLoader(pixels, np.arange(40), torch.arange(40), 8, PRESETS["strong"], (0.5,) * 3,  # noqa: E731
                               (0.25,) * 3, seed=3)
    uninterrupted = make()
    uninterrupted.set_epoch(2)
    expected = list(uninterrupted)
    resumed = make()
    resumed.set_epoch(2, start_batch=3)
    got = list(resumed)
    assert len(got) == 2
    for (images, targets), (want_images, want_targets) in zip(got, expected[3:]):
        torch.testing.assert_close(images, want_images)
        torch.testing.assert_close(targets, want_targets)


def test_sample_weights_draw_rows_in_proportion() -> None:
    n = 100
    weights = np.where(np.arange(n) < 10, 9.0, 1.0)  # rows 0-9 hold half the weight
    data = loader(n=n, batch_size=50, shuffle=True, sample_weights=weights[::-1].copy())
    seen = [row for _ in range(20) for row in rows_seen(data)]
    share = np.mean(np.array(seen) < 10)
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError):
        loader(sample_weights=np.zeros(50))


def test_alternating_flip_mirrors_each_image_on_every_other_epoch() -> None:
    # an asymmetric image per row (its row number on the left half, 255 on the right), shuffled batches
    n = 40
    pixels = np.full((n, 4, 4, 3), 255, dtype=np.uint8)
    pixels[:, :, :2] = np.arange(n, dtype=np.uint8)[:, None, None, None]
    data = BatchLoader(pixels, np.arange(n), torch.arange(n), 8, augment_config("none", hflip=True,
                       alternate_flip=True), (0.0,) * 3, (1 / 255,) * 3, seed=3)

    def flipped_by_row() -> dict[int, bool]:
        seen = {}
        for images, targets in data:
            for image, row in zip(images, targets.tolist()):
                seen[row] = bool(image[0, 0, 0] == 255)  # the bright half moved to the left
        return seen

    epochs = [flipped_by_row() for _ in range(4)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    for row in range(n):
        assert [epoch[row] for epoch in epochs] in ([True, False] * 2, [False, True] * 2)
    assert 0 < sum(epochs[0].values()) < n  # the first epoch starts a random half mirrored
