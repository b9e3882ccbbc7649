"""Plain JPEGs already at the input size take libjpeg-turbo's direct path (imgclf.data.plain_jpeg) with exactly
the pixels and facts of Pillow's path; every other file is left to Pillow."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data import plain_jpeg
from imgclf.data.decode import DecodedFile, decode_bytes, decode_file, open_image


def jpeg(width: int, height: int, mode: str = "RGB", seed: int = 0, **save: object) -> bytes:
    """A textured JPEG (smooth fields plus noise, so every DCT coefficient matters)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    coarse = rng.integers(0, 256, (7, 9, channels), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse.squeeze() if channels == 1 else coarse, mode)
                        .resize((width, height), Image.Resampling.BICUBIC))
    noisy = np.clip(smooth.astype(np.int16) + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, mode).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def pillow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode as if simplejpeg were not installed: every file takes Pillow's path."""
    monkeypatch.setattr(plain_jpeg, "_simplejpeg", lambda: None)


def both_paths(monkeypatch: pytest.MonkeyPatch, data: bytes, *args: object, **kwargs: object
               ) -> tuple[DecodedFile, DecodedFile]:
    direct = decode_bytes(data, *args, **kwargs)  # type: ignore[arg-type]
    with monkeypatch.context() as patch:
        pillow_only(patch)
        return direct, decode_bytes(data, *args, **kwargs)  # type: ignore[arg-type]


def assert_same(direct: DecodedFile, pillow: DecodedFile) -> None:
    assert direct.error == pillow.error == ""
    assert direct.pixels is not None and pillow.pixels is not None
    assert direct.pixels.shape == pillow.pixels.shape and direct.pixels.dtype == np.uint8
    assert np.array_equal(direct.pixels, pillow.pixels)
    assert (direct.width, direct.height, direct.mode, direct.digest) == (
        pillow.width, pillow.height, pillow.mode, pillow.digest)


@pytest.mark.parametrize("save", [{"quality": 95, "subsampling": 0}, {"quality": 75, "subsampling": 2},
                                  {"quality": 85, "subsampling": 1}, {"quality": 80, "progressive": True},
                                  {"quality": 90, "optimize": True}])
def test_a_jpeg_at_the_input_size_decodes_to_pillows_pixels(monkeypatch: pytest.MonkeyPatch, save: dict) -> None:
    data = jpeg(32, 32, **save)
    assert plain_jpeg.decode_plain_jpeg(data, (32, 32), False, 10**8, True) is not None  # the direct path
    assert_same(*both_paths(monkeypatch, data, (32, 32)))


@pytest.mark.parametrize(("width", "height", "side", "draft"), [(256, 256, 32, True), (512, 512, 64, True),
                                                                (448, 448, 224, True), (224, 224, 224, False)])
def test_a_jpeg_that_drafts_to_the_input_size_decodes_to_pillows_pixels(monkeypatch: pytest.MonkeyPatch, width: int,
                                                                        height: int, side: int, draft: bool) -> None:
    """Pillow's draft scales 8, 2 and 1 land exactly on the input size: the direct path decodes at the same scale."""
    data = jpeg(width, height)
    assert plain_jpeg.decode_plain_jpeg(data, (side, side), False, 10**8, draft) is not None
    for policy in ("squash", "crop", "pad"):
        assert_same(*both_paths(monkeypatch, data, (side, side), policy, draft=draft))


@pytest.mark.parametrize("grayscale", [False, True])
def test_a_grayscale_jpeg_decodes_for_colour_and_grayscale_models(monkeypatch: pytest.MonkeyPatch,
                                                                  grayscale: bool) -> None:
    direct, pillow = both_paths(monkeypatch, jpeg(128, 128, "L"), (64, 64), "crop", grayscale)
    assert_same(direct, pillow)
    assert direct.mode == "L" and direct.pixels is not None and direct.pixels.shape == (64, 64, 1 if grayscale else 3)


def test_files_the_direct_path_cannot_match_are_left_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    colour = jpeg(64, 64)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees
    Image.open(io.BytesIO(colour)).save(rotated, "JPEG", exif=exif)
    png = io.BytesIO()
    Image.open(io.BytesIO(colour)).save(png, "PNG")
    declined = {"EXIF orientation": (rotated.getvalue(), False), "CMYK": (jpeg(64, 64, "CMYK"), False),
                "colour file, grayscale model": (colour, True), "PNG": (png.getvalue(), False),
                "truncated": (colour[: len(colour) // 2], False), "a resize follows": (jpeg(100, 64), False)}
    for name, (data, grayscale) in declined.items():
        assert plain_jpeg.decode_plain_jpeg(data, (64, 64), grayscale, 10**8, True) is None, name
    for data in (rotated.getvalue(), jpeg(100, 64)):
        assert_same(*both_paths(monkeypatch, data, (40, 20), "crop"))
    truncated = decode_bytes(colour[: len(colour) // 2], (64, 64))
    assert truncated.pixels is None and "truncated" in truncated.error


def test_the_pixel_limit_still_refuses_a_bomb_with_its_message() -> None:
    decoded = decode_bytes(jpeg(256, 256), (32, 32), max_pixels=50_000)
    assert decoded.pixels is None and "over the limit of 50,000" in decoded.error


def test_without_simplejpeg_every_file_decodes_through_pillow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from imgclf.data import decode

    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg now fails, as on an install without it
    opened = []
    monkeypatch.setattr(decode, "open_image", lambda *args, **kwargs: opened.append(1) or open_image(*args, **kwargs))
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg(32, 32))
    decoded = decode_file(path, (32, 32))
    assert decoded.error == "" and decoded.pixels is not None and decoded.pixels.shape == (32, 32, 3)
    assert opened == [1]  # Pillow decoded it
