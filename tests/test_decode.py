"""decode_file on the images real folders hold: odd modes, EXIF rotation, broken files, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.decode import DecodedFile, decode_file, fit

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)
WHITE = (255, 255, 255)


def save(image: Image.Image, path: Path, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def solid(colour: tuple[int, ...], size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Image.Image:
    """A one-colour image; ``size`` is PIL's (width, height)."""
    return Image.new(mode, size, colour)


def halves(width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def noisy(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def ok(decoded: DecodedFile) -> np.ndarray:
    assert decoded.error == "", decoded.error
    assert decoded.pixels is not None
    assert decoded.pixels.dtype == np.uint8
    return decoded.pixels


def assert_close(pixel: np.ndarray, expected: tuple[int, ...], tolerance: int = 12) -> None:
    diff = np.abs(np.asarray(pixel, dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= tolerance, f"{pixel.tolist()} is not close to {expected}"


# --- modes --------------------------------------------------------------------------------------


def test_rgb_jpeg(tmp_path: Path) -> None:
    path = save(solid((200, 40, 60), (24, 16)), tmp_path / "a.jpg", quality=95)
    decoded = decode_file(path, (8, 8))
    pixels = ok(decoded)
    assert pixels.shape == (8, 8, 3)
    assert_close(pixels[4, 4], (200, 40, 60), tolerance=6)
    assert (decoded.width, decoded.height, decoded.mode) == (24, 16, "RGB")


def test_grayscale_image_as_one_channel_or_three(tmp_path: Path) -> None:
    path = save(solid(90, (10, 10), "L"), tmp_path / "g.png")
    gray = ok(decode_file(path, (8, 8), grayscale=True))
    assert gray.shape == (8, 8, 1)
    assert np.all(gray == 90)
    colour = ok(decode_file(path, (8, 8), grayscale=False))
    assert colour.shape == (8, 8, 3)
    assert np.all(colour == 90)
    assert decode_file(path, (8, 8)).mode == "L"


def test_colour_image_with_grayscale_true_has_one_channel(tmp_path: Path) -> None:
    path = save(solid(RED), tmp_path / "r.png")
    pixels = ok(decode_file(path, (8, 8), grayscale=True))
    assert pixels.shape == (8, 8, 1)
    assert 60 < pixels[0, 0, 0] < 90  # ITU-R 601 luma of pure red is 76


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.zeros((8, 8), dtype=np.uint16)
    values[:, 4:] = 65535
    values[:4, :4] = 32896  # 128 * 257
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    decoded = decode_file(path, (8, 8), grayscale=True)
    assert decoded.mode.startswith("I")
    pixels = ok(decoded)[:, :, 0]
    assert np.all(pixels[:, 4:] == 255)
    assert np.all(pixels[:4, :4] == 128)
    assert np.all(pixels[4:, :4] == 0)
    rgb = ok(decode_file(path, (8, 8)))
    assert rgb.shape == (8, 8, 3) and np.all(rgb[:, 4:] == 255) and np.all(rgb[:4, :4] == 128)


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    values = np.zeros((8, 8), dtype=np.float32)
    values[:, 4:] = 1.0
    values[:4, :4] = 0.5
    path = save(Image.fromarray(values), tmp_path / "f.tif")
    decoded = decode_file(path, (8, 8), grayscale=True)
    assert decoded.mode == "F"
    pixels = ok(decoded)[:, :, 0]
    assert np.all(pixels[:, 4:] == 255)
    assert np.all(np.abs(pixels[:4, :4].astype(int) - 128) <= 1)
    assert np.all(pixels[4:, :4] == 0)


def test_palette_png_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, *GREEN] + [0] * (256 * 3 - 6))
    for x in range(4):
        for y in range(8):
            image.putpixel((x, y), 1)
    path = save(image, tmp_path / "p.png", transparency=0)
    decoded = decode_file(path, (8, 8))
    assert decoded.mode == "P"
    pixels = ok(decoded)
    assert np.all(pixels[:, :4] == GREEN)
    assert np.all(pixels[:, 4:] == WHITE), "the transparent palette entry is black; it must become white"


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, *BLUE] + [0] * (256 * 3 - 6))
    pixels = ok(decode_file(save(image, tmp_path / "p.png"), (8, 8)))
    assert np.all(pixels == BLUE)


def test_rgba_transparent_pixels_become_white_opaque_keep_colour(tmp_path: Path) -> None:
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 0))  # invisible dark colour
    image.paste((200, 50, 20, 255), (0, 0, 4, 8))
    decoded = decode_file(save(image, tmp_path / "a.png"), (8, 8))
    assert decoded.mode == "RGBA"
    pixels = ok(decoded)
    assert np.all(pixels[:, :4] == (200, 50, 20))
    assert np.all(pixels[:, 4:] == WHITE)


def test_la_image(tmp_path: Path) -> None:
    image = Image.new("LA", (8, 8), (30, 0))
    image.paste((70, 255), (0, 0, 4, 8))
    decoded = decode_file(save(image, tmp_path / "la.png"), (8, 8), grayscale=True)
    assert decoded.mode == "LA"
    pixels = ok(decoded)
    assert pixels.shape == (8, 8, 1)
    assert np.all(pixels[:, :4, 0] == 70)
    assert np.all(pixels[:, 4:, 0] == 255)
    rgb = ok(decode_file(tmp_path / "la.png", (8, 8)))
    assert np.all(rgb[:, :4] == 70) and np.all(rgb[:, 4:] == 255)


def test_cmyk_jpeg_comes_out_rgb_of_the_right_colour(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    decoded = decode_file(path, (8, 8))
    assert decoded.mode == "CMYK"
    pixels = ok(decoded)
    assert pixels.shape == (8, 8, 3)
    assert_close(pixels[4, 4], RED, tolerance=20)


def test_bilevel_image(tmp_path: Path) -> None:
    image = Image.new("1", (8, 8), 0)
    image.paste(1, (0, 0, 4, 8))
    decoded = decode_file(save(image, tmp_path / "b.png"), (8, 8))
    assert decoded.mode == "1"
    pixels = ok(decoded)
    assert np.all(pixels[:, :4] == 255)
    assert np.all(pixels[:, 4:] == 0)


# --- EXIF orientation ---------------------------------------------------------------------------


def test_exif_orientation_rotates_pixels_and_swaps_size(tmp_path: Path) -> None:
    image = halves(40, 20, RED, BLUE)  # stored wide: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(image, tmp_path / "phone.jpg", exif=exif, quality=95)
    decoded = decode_file(path, (40, 20))
    assert (decoded.width, decoded.height) == (20, 40), "reported as displayed, portrait"
    pixels = ok(decoded)
    assert pixels.shape == (40, 20, 3)
    # Turning the stored picture clockwise brings its left (red) edge to the top.
    assert_close(pixels[5, 10], RED)
    assert_close(pixels[-5, 10], BLUE)
    assert_close(pixels[10, 2], RED) and assert_close(pixels[10, -3], RED)
    validated = decode_file(path)
    assert (validated.width, validated.height) == (20, 40)


def test_exif_orientation_with_small_target_still_rotated(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 counter-clockwise: the left edge goes to the bottom
    path = save(halves(40, 20, RED, BLUE), tmp_path / "phone.jpg", exif=exif, quality=95)
    decoded = decode_file(path, (8, 4))
    assert (decoded.width, decoded.height) == (20, 40)
    pixels = ok(decoded)
    assert pixels.shape == (8, 4, 3)
    assert_close(pixels[0, 2], BLUE, tolerance=30)
    assert_close(pixels[-1, 2], RED, tolerance=30)


def test_no_exif_keeps_size(tmp_path: Path) -> None:
    decoded = decode_file(save(halves(40, 20, RED, BLUE), tmp_path / "a.jpg"), (20, 40))
    assert (decoded.width, decoded.height) == (40, 20)
    pixels = ok(decoded)
    assert_close(pixels[10, 5], RED) and assert_close(pixels[10, -5], BLUE)


# --- broken files -------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    decoded = decode_file(path, (8, 8))
    assert decoded.pixels is None
    assert "empty file" in decoded.error


def test_truncated_jpeg_is_reported_not_raised(tmp_path: Path) -> None:
    whole = save(noisy(40, 40), tmp_path / "whole.jpg", quality=95).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    for size in ((8, 8), (40, 40), None):
        decoded = decode_file(path, size)
        assert decoded.pixels is None
        assert "decode" in decoded.error, decoded.error


def test_truncated_png_is_reported_not_raised(tmp_path: Path) -> None:
    whole = save(noisy(40, 40), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    decoded = decode_file(path, (8, 8))
    assert decoded.pixels is None and decoded.error


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    decoded = decode_file(path, (8, 8))
    assert decoded.pixels is None
    assert "not an image" in decoded.error
    assert decoded.digest, "the digest is known even for a bad file"


def test_missing_file(tmp_path: Path) -> None:
    decoded = decode_file(tmp_path / "gone.jpg", (8, 8))
    assert decoded.pixels is None
    assert decoded.error == "file not found"


def test_image_over_max_pixels_is_refused(tmp_path: Path) -> None:
    path = save(solid(RED, (20, 20)), tmp_path / "big.png")
    decoded = decode_file(path, (8, 8), max_pixels=100)
    assert decoded.pixels is None
    assert "400" in decoded.error and "100" in decoded.error
    assert "--max-pixels" in decoded.error
    assert ok(decode_file(path, (8, 8), max_pixels=400)).shape == (8, 8, 3)


# --- resizing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
@pytest.mark.parametrize("size", [(8, 8), (6, 10), (12, 5)])
def test_every_policy_gives_the_target_shape(tmp_path: Path, policy: str, size: tuple[int, int]) -> None:
    path = save(noisy(30, 17), tmp_path / "n.png")
    assert ok(decode_file(path, size, policy=policy)).shape == (*size, 3)
    assert ok(decode_file(path, size, policy=policy, grayscale=True)).shape == (*size, 1)


def test_squash_keeps_all_content(tmp_path: Path) -> None:
    path = save(halves(40, 10, RED, BLUE), tmp_path / "w.png")
    pixels = ok(decode_file(path, (10, 10), policy="squash"))
    assert np.all(pixels[:, :4] == RED) and np.all(pixels[:, -4:] == BLUE)


def test_pad_letterboxes_a_wide_image_with_black_bars(tmp_path: Path) -> None:
    path = save(solid(GREEN, (40, 20)), tmp_path / "w.png")
    pixels = ok(decode_file(path, (20, 20), policy="pad"))
    assert np.all(pixels[:5] == 0), "top bar"
    assert np.all(pixels[-5:] == 0), "bottom bar"
    assert np.all(pixels[5:15] == GREEN), "the whole image in the middle"


def test_pad_pillarboxes_a_tall_image(tmp_path: Path) -> None:
    path = save(solid(GREEN, (10, 40)), tmp_path / "t.png")
    pixels = ok(decode_file(path, (16, 16), policy="pad"))
    assert np.all(pixels[:, :6] == 0) and np.all(pixels[:, -6:] == 0)
    assert np.all(pixels[:, 6:10] == GREEN)


def test_crop_keeps_the_centre(tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 10), RED)
    image.paste(GREEN, (10, 0, 20, 10))  # distinct centre third
    path = save(image, tmp_path / "w.png")
    pixels = ok(decode_file(path, (10, 10), policy="crop"))  # no scaling needed: an exact cut
    assert np.all(pixels == GREEN)


def test_crop_after_scaling_keeps_the_centre(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 20), RED)
    image.paste(GREEN, (20, 0, 40, 20))
    path = save(image, tmp_path / "w.png")
    pixels = ok(decode_file(path, (10, 10), policy="crop"))
    assert np.all(pixels[:, 1:-1] == GREEN), "the inside is the centre; only the edge columns may blend"
    assert np.all(pixels[..., 1] > pixels[..., 0]), "no column is mostly the red sides"


def test_fit_directly_and_unknown_policy() -> None:
    image = solid(RED, (12, 6))
    assert fit(image, (3, 4), "squash").size == (4, 3)
    assert fit(image, (3, 4), "crop").size == (4, 3)
    assert fit(image, (3, 4), "pad").size == (4, 3)
    with pytest.raises(ValueError):
        fit(image, (3, 4), "stretch")  # type: ignore[arg-type]


# --- digests and validation ---------------------------------------------------------------------


def test_digest_depends_only_on_bytes(tmp_path: Path) -> None:
    first = save(noisy(16, 16, seed=1), tmp_path / "a.png")
    copy = tmp_path / "sub" / "copy_of_a.png"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    other = save(noisy(16, 16, seed=2), tmp_path / "b.png")
    digests = [decode_file(p, (8, 8)).digest for p in (first, copy, other)]
    assert digests[0] and digests[0] == digests[1]
    assert digests[2] != digests[0]
    assert decode_file(first).digest == digests[0], "validation gives the same digest"


def test_size_none_validates_without_pixels(tmp_path: Path) -> None:
    path = save(Image.new("P", (30, 12), 0), tmp_path / "p.png")
    decoded = decode_file(path)
    assert decoded.pixels is None
    assert decoded.error == ""
    assert (decoded.width, decoded.height, decoded.mode) == (30, 12, "P")
    assert decoded.digest


def test_size_none_on_a_large_jpeg_reports_full_size(tmp_path: Path) -> None:
    path = save(noisy(300, 200), tmp_path / "big.jpg")
    decoded = decode_file(path)
    assert decoded.error == "" and decoded.pixels is None
    assert (decoded.width, decoded.height, decoded.mode) == (300, 200, "RGB")


def test_dark_sixteen_bit_scan_stays_dark(tmp_path: Path) -> None:
    """A 16-bit image is scaled from its full range even when every value is small."""
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(path)
    decoded = decode_file(path, (8, 8), grayscale=True)
    assert decoded.error == "" and int(decoded.pixels.max()) <= 1
