"""The one place that opens image files.

Real folders hold phone photos rotated by EXIF, 16-bit scans, palette PNGs
with transparency, CMYK JPEGs from print catalogues, empty and truncated
files, and the odd text file named ``.jpg``. :func:`decode_file` turns each
into a uint8 array (or a reason it could not), so one bad file is reported
and skipped instead of ending a training run.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from imgclf.data.plain_jpeg import decode_plain_jpeg
from imgclf.data.quality import THUMBNAIL_SIDE, measure
from imgclf.errors import one_line

ResizePolicy = Literal["squash", "crop", "pad"]
# Pillow's own bomb limit is a warning up to twice this; we refuse above it.
DEFAULT_MAX_PIXELS = 89_478_485
# Transparent areas become white: product shots with cut-out backgrounds are
# shown on white, and a black fill would teach the model a false cue.
TRANSPARENT_FILL = (255, 255, 255)
EXIF_ORIENTATION = 0x0112

# We check the pixel count ourselves (with a message that says what to do)
# and never want a half-decoded image silently accepted.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(Exception):
    """A file that cannot be used as an image; the message is the reason."""


@dataclass(frozen=True)
class DecodedFile:
    """What decoding one file found: its pixels (if asked for) and facts for ``inspect``."""

    pixels: np.ndarray | None  # (H, W, C) uint8, C = 3 (RGB) or 1 (grayscale)
    width: int = 0  # after EXIF rotation, before resizing
    height: int = 0
    mode: str = ""  # the file's own PIL mode, e.g. "RGB", "P", "I;16", "CMYK"
    digest: str = ""  # content hash of the file's bytes, for exact-duplicate search
    error: str = ""  # why the file was skipped; empty when it decoded
    quality: np.ndarray | None = None  # imgclf.data.quality.MEASURES, when asked for


def decode_file(
    path: Path,
    size: tuple[int, int] | None = None,
    policy: ResizePolicy = "squash",
    grayscale: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
    quality: bool = False,
) -> DecodedFile:
    """Decode ``path`` to ``size`` (height, width), or just validate it when ``size`` is None.

    Never raises for a bad file: the reason comes back in ``error``. ``draft``
    (the default everywhere) lets a JPEG decode at the smallest DCT scale that
    covers ``size`` (see :func:`open_image`); False decodes every pixel, the
    reference the scaled decode is measured against. ``quality`` also takes
    :mod:`imgclf.data.quality`'s measures from the decoded image (inspect's checks).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return DecodedFile(None, error="file not found")
    except OSError as error:
        return DecodedFile(None, error=f"cannot read file ({error.strerror or error})")
    return decode_bytes(data, size, policy, grayscale, max_pixels, draft, quality)


def decode_bytes(
    data: bytes,
    size: tuple[int, int] | None = None,
    policy: ResizePolicy = "squash",
    grayscale: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
    quality: bool = False,
) -> DecodedFile:
    """:func:`decode_file` for bytes already in memory (an upload to the REST API); never raises.

    Plain JPEGs already at ``size`` take :mod:`imgclf.data.plain_jpeg`'s path (same pixels, a fraction of
    the Python); the rest, and every file that path declines, go through Pillow.
    """
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if not data:
        return DecodedFile(None, digest=digest, error="empty file (0 bytes)")
    plain = decode_plain_jpeg(data, size, grayscale, max_pixels, draft) if size and not quality else None
    if plain is not None:
        direct, (width, height), mode = plain
        return DecodedFile(direct, width=width, height=height, mode=mode, digest=digest)
    try:
        smallest = (THUMBNAIL_SIDE, THUMBNAIL_SIDE) if quality else (64, 64)
        draft_size = (size or smallest) if draft else None
        image, mode, (width, height) = open_image(data, max_pixels=max_pixels, draft_size=draft_size)
        image = to_channels(image, grayscale)
        measures = measure(image) if quality else None
        pixels = None
        if size is not None:
            pixels = np.asarray(fit(image, size, policy), dtype=np.uint8)
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
    except DecodeError as error:
        return DecodedFile(None, digest=digest, error=str(error))
    return DecodedFile(pixels, width=width, height=height, mode=mode, digest=digest, quality=measures)


def open_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None
) -> tuple[Image.Image, str, tuple[int, int]]:
    """Fully decode ``data`` with EXIF orientation applied.

    Returns the image, the file's own mode, and its full (width, height) as
    displayed (after EXIF rotation), which drafting does not change.

    ``draft_size`` lets JPEGs decode at a reduced scale (1/2 to 1/8) that is
    still at least that large: a 4000 px phone photo bound for 224 px then
    decodes many times faster, with no loss at the target size.
    """
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise DecodeError(f"cannot open image ({error})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(a decompression bomb?); raise the limit with --max-pixels if the file is trusted"
        )
    mode = image.mode
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
        if draft_size is not None and image.format == "JPEG":
            image.draft(mode if mode in ("RGB", "L") else None, (max(draft_size), max(draft_size)))
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise DecodeError(f"cannot decode image ({one_line(error)})") from None
    return image, mode, (width, height)


def peek_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as displayed, from the file header alone; None when it is not a readable image.

    Cheap enough to sample a few hundred files when choosing defaults from the data.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return width, height


def to_channels(image: Image.Image, grayscale: bool) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (or L with ``grayscale``).

    High-bit-depth images are scaled into 0..255 rather than clipped, and
    transparency is flattened onto white.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image), sixteen_bit=image.mode.startswith("I;16")))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_FILL, 255))
        image = Image.alpha_composite(background, rgba)
    target = "L" if grayscale else "RGB"
    return image if image.mode == target else image.convert(target)


def _to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float pixels into uint8.

    A 16-bit file is always scaled from 0..65535, so a dark scan stays dark;
    32-bit integer and float files carry no range, so it is guessed from
    their values (0..1 floats, else 16-bit-style values above 255).
    """
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    if is_float and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif sixteen_bit or (values.size and values.max() > 255):
        values = values / 257.0  # 65535 -> 255
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def fit(image: Image.Image, size: tuple[int, int], policy: ResizePolicy) -> Image.Image:
    """Resize to ``size`` (height, width) by ``policy``.

    - ``squash``: stretch to the target, keeping every pixel of content;
    - ``crop``: scale the shorter side to fit, then cut the centre;
    - ``pad``: scale the longer side to fit and letterbox with black.
    """
    height, width = size
    if policy == "squash":
        return _resize(image, (width, height))
    src_w, src_h = image.size
    if policy == "crop":
        scale = max(width / src_w, height / src_h)
        scaled = _resize(image, (max(width, round(src_w * scale)), max(height, round(src_h * scale))))
        left = (scaled.width - width) // 2
        top = (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    if policy == "pad":
        scale = min(width / src_w, height / src_h)
        scaled = _resize(image, (max(1, round(src_w * scale)), max(1, round(src_h * scale))))
        canvas = Image.new(image.mode, (width, height))
        canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
        return canvas
    raise ValueError(f"unknown resize policy {policy!r}")


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    # Pillow's resize is antialiased; reducing_gap first shrinks by whole
    # factors, much faster for big reductions with no visible difference.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
