"""Batched augmentation: seeded determinism and what each operation does to pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf.data.augment import augment_batch, mix_batch
from imgclf.data.augment_presets import PRESETS, AugmentConfig, augment_config
from imgclf.errors import ImgclfError


def batch(n: int = 8, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, channels), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def run(images: torch.Tensor, config: AugmentConfig, seed: int = 0, **kwargs) -> torch.Tensor:
    return augment_batch(images, config, torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_are_deterministic_under_a_seed(preset: str) -> None:
    images = batch()
    first, again, other = run(images, PRESETS[preset]), run(images, PRESETS[preset]), run(images, PRESETS[preset], 1)
    assert first.shape == (8, 3, 16, 16) and first.dtype == torch.float32
    assert first.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    if preset != "none":
        assert not torch.equal(first, other)


def test_none_is_exact_normalisation() -> None:
    images = batch()
    out = run(images, PRESETS["none"], mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    expected = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / \
        torch.tensor([0.2, 0.25, 0.5])[:, None, None]
    torch.testing.assert_close(out, expected)


def test_horizontal_flip_gives_original_or_mirror_and_both_occur() -> None:
    images = batch(n=32)
    out = run(images, AugmentConfig(hflip=True)) * 255
    original = images.permute(0, 3, 1, 2).float()
    flipped = [torch.allclose(o, x.flip(2), atol=1e-3) for o, x in zip(out, original)]
    kept = [torch.allclose(o, x, atol=1e-3) for o, x in zip(out, original)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_translation_moves_a_dot_by_at_most_the_limit() -> None:
    images = torch.zeros(16, 32, 32, 3, dtype=torch.uint8)
    images[:, 16, 16] = 255
    out = run(images, AugmentConfig(translate=0.125))
    for image in out:
        ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
        assert len(ys) == 1, "an integer shift keeps the single dot intact"
        assert abs(int(ys[0]) - 16) <= 4 and abs(int(xs[0]) - 16) <= 4


def test_colour_jitter_keeps_grey_images_grey() -> None:
    grey = torch.randint(0, 256, (8, 16, 16, 1), dtype=torch.uint8).expand(8, 16, 16, 3).contiguous()
    out = run(grey, AugmentConfig(saturation=0.5, hue=0.2, brightness=0.3, contrast=0.3))
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 1], out[:, 2], atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_brightness_changes_each_image_by_its_own_factor() -> None:
    images = torch.full((16, 8, 8, 3), 100, dtype=torch.uint8)
    out = run(images, AugmentConfig(brightness=0.5))
    means = out.mean((1, 2, 3)) * 255
    assert ((means > 49) & (means < 151)).all() and means.std() > 5


def test_cutout_erases_one_square_per_image() -> None:
    images = torch.full((4, 20, 20, 3), 255, dtype=torch.uint8)
    out = run(images, AugmentConfig(cutout=0.25))
    assert ((out == 0).sum((1, 2, 3)) == 5 * 5 * 3).all()


def test_rotation_path_and_grayscale_batches() -> None:
    out = run(batch(channels=1), PRESETS["strong"])
    assert out.shape == (8, 1, 16, 16) and torch.isfinite(out).all()


def test_mixup_mixes_targets_in_the_pixel_proportion() -> None:
    images = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 4, 4).contiguous()
    targets = torch.eye(8)
    mixed, soft = mix_batch(images, targets, AugmentConfig(mixup=1.0), torch.Generator().manual_seed(3))
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    expected = (soft * torch.arange(8.0)).sum(1)  # each pixel is the target-weighted mix of image values
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)


def test_cutmix_target_weights_equal_pasted_area() -> None:
    images = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 10, 10).contiguous()
    mixed, soft = mix_batch(images, torch.eye(8), AugmentConfig(cutmix=1.0), torch.Generator().manual_seed(0))
    for index in range(8):
        own = (mixed[index, 0] == index).float().mean()
        assert abs(float(soft[index, index]) - float(own)) < 1e-6


def test_presets_by_name_and_bad_names() -> None:
    assert augment_config("light", mixup=0.2).mixup == 0.2
    with pytest.raises(ImgclfError, match="preset"):
        augment_config("wild")
    with pytest.raises(ImgclfError, match="unknown augmentation"):
        augment_config("light", wobble=1)


def test_reflect_translate_shifts_whole_pixels_and_mirrors_the_border() -> None:
    images = batch(n=32, size=12)
    config = AugmentConfig(translate=2 / 12, reflect=True)
    out = run(images, config, std=(1 / 255,) * 3).round().to(torch.uint8).permute(0, 2, 3, 1)
    padded = np.pad(images.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    shifts = []
    for index in range(len(images)):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(out[index].numpy(), padded[index, 2 + dy:14 + dy, 2 + dx:14 + dx])]
        assert len(matches) == 1, index  # exactly one reflected shift of at most 2 px explains every output
        shifts.append(matches[0])
    assert len(set(shifts)) > 5  # and the shifts vary from image to image
