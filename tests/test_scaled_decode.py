"""JPEGs decode at the smallest DCT scale that covers the model's input (PIL's draft mode, libjpeg's 1/2..1/8),
in predict, serve and the training cache's first decode alike, and the pixels the model sees stay within the stated
tolerance of a full-size decode.

The tolerance (0..255 levels, measured on this test's photo-like image and on flowers photos upscaled to
12 megapixels, 4000x3000 JPEG q90, decoded to 224 and 32 px): mean |difference| at most 1.0 (0.2 to 0.94 measured),
99th percentile at most 6 (1 to 5 measured). On flowers' own photos (at most 320 px) nothing is scaled at 224
px, where a 1/2 decode would no longer cover the input; at 112 px the 42% of them that are scaled differ by 0.78
on average (squash; crop 1.0) and by 5.9 at worst for a highly textured photo.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.cache import build_cache
from imgclf.data.decode import decode_bytes, decode_file, open_image

MEAN_TOLERANCE, P99_TOLERANCE = 1.0, 6.0


def photo_like_jpeg(width: int = 3000, height: int = 2000, seed: int = 0) -> bytes:
    """Smooth colour fields with a few sharp edges, as a JPEG: what a camera photo's spectrum roughly looks like."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize((width, height),
                                                                                     Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse).copy()
    for _ in range(6):  # hard-edged shapes
        top, left = rng.integers(0, height - 300), rng.integers(0, width - 300)
        pixels[top:top + 250, left:left + 250] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_a_large_jpeg_decodes_at_the_smallest_scale_covering_the_input() -> None:
    data = photo_like_jpeg()
    assert open_image(data, draft_size=(224, 224))[0].size == (375, 250)  # 1/8: still covers 224 on both sides
    assert open_image(data, draft_size=(300, 300))[0].size == (750, 500)  # 1/8 would not: 1/4
    assert open_image(data, draft_size=None)[0].size == (3000, 2000)
    image, _, full_size = open_image(data, draft_size=(224, 224))
    assert full_size == (3000, 2000)  # the facts inspect reports are the file's, not the draft's


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
@pytest.mark.parametrize("size", [224, 32])
def test_scaled_pixels_are_within_the_stated_tolerance_of_a_full_decode(policy: str, size: int) -> None:
    data = photo_like_jpeg()
    scaled = decode_bytes(data, (size, size), policy).pixels  # type: ignore[arg-type]
    full = decode_bytes(data, (size, size), policy, draft=False).pixels  # type: ignore[arg-type]
    assert scaled is not None and full is not None and scaled.shape == full.shape == (size, size, 3)
    difference = np.abs(scaled.astype(np.int16) - full.astype(np.int16))
    assert difference.mean() <= MEAN_TOLERANCE and np.percentile(difference, 99) <= P99_TOLERANCE
    assert difference.any()  # the scaled decode did run


def test_the_training_cache_decodes_at_the_scaled_size_too(tmp_path: Path) -> None:
    files = []
    for seed in range(3):
        files.append(tmp_path / f"photo{seed}.jpg")
        files[-1].write_bytes(photo_like_jpeg(1600, 1200, seed))
    cache = build_cache(files, (64, 64), cache_root=tmp_path / "cache", source="photos", workers=1)
    assert cache.pixels is not None
    for index, path in enumerate(files):
        np.testing.assert_array_equal(cache.pixels[index], decode_file(path, (64, 64)).pixels)
        assert not np.array_equal(cache.pixels[index], decode_file(path, (64, 64), draft=False).pixels)
    assert (cache.widths[0], cache.heights[0]) == (1600, 1200)
