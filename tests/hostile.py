"""A generated corpus of hostile and odd image files, for the reliability tests and benchmarks.

Every kind of file a real folder (or an attacker) can hold: empty, truncated
and bit-flipped images, other content under an image name, decompression
bombs that only claim their size in the header, animated and high-bit-depth
images, CMYK, palette with transparency, all eight EXIF orientations,
1x1 and extreme aspect ratios, symlink loops, files whose read fails,
unreadable permissions and names that are not UTF-8. Each file says whether
it is *good* (must decode and be used) or *bad* (must be skipped and
reported once, with a reason), so a test can check a command against it.

Everything is generated (seeded) in a few hundred milliseconds; nothing is
read from outside the test's folder.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDES = ((30_000, 30_000), (65_535, 65_535), (100_000, 100_000))
NON_UTF8_STEMS = (b"caf\xe9-latin1", b"bad-\xff\xfe-bytes")  # Latin-1 and invalid bytes: not decodable as UTF-8


@dataclass(frozen=True)
class HostileFile:
    """One generated file: where it is, what kind it is, and whether a command must use it."""

    path: Path
    kind: str
    good: bool


def picture(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24), seed: int = 0) -> Image.Image:
    """A noisy one-colour RGB picture; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.clip(np.array(colour) + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` grey pixels, with one tiny compressed row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(picture((90, 90, 90), (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", min(height, 65_535), min(width, 65_535))
    return bytes(data)


def flipped(data: bytes, seed: int, flips: int = 8, start: int = 0) -> bytes:
    """``data`` with ``flips`` random bits flipped at or after byte ``start`` (seeded)."""
    rng = np.random.default_rng(seed)
    mutable = bytearray(data)
    for position in rng.integers(start, len(data), flips):
        mutable[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(mutable)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=95)


def animated(fmt: str, colour: tuple[int, int, int]) -> bytes:
    frames = [picture(colour, seed=seed) for seed in range(3)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def sixteen_bit(colour_value: int) -> bytes:
    return encode(Image.fromarray(np.full((20, 20), colour_value * 257, dtype=np.uint16)), "PNG")


def palette_with_transparency(colour: tuple[int, int, int]) -> bytes:
    image = picture(colour).quantize(16)
    return encode(image, "PNG", transparency=0)


def hostile_bytes(colour: tuple[int, int, int] = (220, 30, 30)) -> dict[str, tuple[bytes, str, bool]]:
    """Each in-memory kind as ``name -> (bytes, file suffix, good)``; good images are mostly ``colour``."""
    jpeg = encode(picture(colour), "JPEG", quality=90)
    png = encode(picture(colour), "PNG")
    kinds: dict[str, tuple[bytes, str, bool]] = {"zero-byte": (b"", ".jpg", False)}
    for length in (1, 10, 100, len(jpeg) // 2):
        kinds[f"truncated-jpeg-{length}"] = (jpeg[:length], ".jpg", False)
    for length in (8, 33, 60, len(png) // 2, len(png) * 9 // 10):
        kinds[f"truncated-png-{length}"] = (png[:length], ".png", False)
    # only the end marker missing: every pixel is there, so the image is used (as Pillow and browsers do)
    kinds["png-missing-iend"] = (png[:-12], ".png", True)
    kinds["bitflip-png-signature"] = (flipped(png[:8], seed=1, flips=1) + png[8:], ".png", False)
    kinds["bitflip-png-header"] = (png[:16] + flipped(png[16:29], seed=2, flips=3) + png[29:], ".png", False)
    kinds["bitflip-jpeg-markers"] = (jpeg[:2] + b"\x00\x00" + jpeg[4:], ".jpg", False)
    kinds["text-as-jpg"] = (b"just some notes\nnot a picture\n" * 20, ".jpg", False)
    kinds["html-as-png"] = (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", ".png", False)
    kinds["svg-as-png"] = (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                           b'<rect width="10" height="10"/></svg>', ".png", False)
    kinds["pdf-as-jpg"] = (b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n", ".jpg", False)
    for width, height in BOMB_SIDES:
        kinds[f"bomb-png-{width}x{height}"] = (png_bomb(width, height), ".png", False)
    kinds["bomb-jpeg-30000x30000"] = (jpeg_bomb(30_000, 30_000), ".jpg", False)
    kinds["bomb-jpeg-65535x65535"] = (jpeg_bomb(65_535, 65_535), ".jpg", False)
    kinds["animated-gif"] = (animated("GIF", colour), ".gif", True)
    kinds["animated-webp"] = (animated("WEBP", colour), ".webp", True)
    kinds["sixteen-bit-png"] = (sixteen_bit(colour[0]), ".png", True)
    kinds["cmyk-jpeg"] = (encode(picture(colour).convert("CMYK"), "JPEG"), ".jpg", True)
    kinds["palette-transparency-png"] = (palette_with_transparency(colour), ".png", True)
    for orientation in range(1, 9):
        kinds[f"exif-orientation-{orientation}"] = (with_orientation(picture(colour, (24, 16)), orientation), ".jpg", True)
    kinds["one-pixel-png"] = (encode(Image.new("RGB", (1, 1), colour), "PNG"), ".png", True)
    kinds["wide-2000x1-png"] = (encode(picture(colour, (2000, 1)), "PNG"), ".png", True)
    kinds["tall-1x2000-png"] = (encode(picture(colour, (1, 2000)), "PNG"), ".png", True)
    return kinds


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def write_hostile_corpus(folder: Path, colour: tuple[int, int, int] = (220, 30, 30)) -> list[HostileFile]:
    """Write every hostile kind into ``folder`` (created); returns the files with their expected verdict.

    Besides :func:`hostile_bytes`: a symlink loop, a file whose read fails
    with an I/O error (a link to ``/proc/self/mem``, which no one can read
    from offset 0, root included), a file with no read permission (only
    when not running as root: root reads any file whatever its mode, so the
    I/O-error file stands in for it there), and good and bad images under
    file names that are not valid UTF-8.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files: list[HostileFile] = []
    for kind, (data, suffix, good) in hostile_bytes(colour).items():
        path = folder / f"{kind}{suffix}"
        path.write_bytes(data)
        files.append(HostileFile(path, kind, good))
    loop_a, loop_b = folder / "symlink-loop-a.jpg", folder / "symlink-loop-b.jpg"
    os.symlink(loop_b.name, loop_a)
    os.symlink(loop_a.name, loop_b)
    files += [HostileFile(loop_a, "symlink-loop", False), HostileFile(loop_b, "symlink-loop", False)]
    if Path("/proc/self/mem").exists():
        io_error = folder / "read-fails-eio.png"
        os.symlink("/proc/self/mem", io_error)
        files.append(HostileFile(io_error, "read-fails", False))
    if not running_as_root():
        locked = folder / "no-permission.png"
        locked.write_bytes(encode(picture(colour), "PNG"))
        locked.chmod(0)
        files.append(HostileFile(locked, "unreadable-permissions", False))
    good_stem, bad_stem = NON_UTF8_STEMS
    good_name = Path(os.fsdecode(os.fsencode(folder) + b"/" + good_stem + b".png"))
    good_name.write_bytes(encode(picture(colour, seed=7), "PNG"))
    bad_name = Path(os.fsdecode(os.fsencode(folder) + b"/" + bad_stem + b".jpg"))
    bad_name.write_bytes(b"not an image either")
    files += [HostileFile(good_name, "non-utf8-name", True), HostileFile(bad_name, "non-utf8-name-broken", False)]
    return files
