"""Plain JPEGs already at the model's input size, straight through libjpeg-turbo, pixel for pixel Pillow's.

For small JPEGs most of :func:`imgclf.data.decode.decode_bytes`' time is
Pillow's Python around the decode (open, mode and EXIF checks, ``draft``,
``load``): on CIFAR's 32 px files simplejpeg decodes 4.8x as many images a
second with identical pixels (``benchmarks/results/decode.json``, key
``plain_jpeg``). Where a resize follows, the decode is not the cost: a first
version that also took those files measured no faster (flowers 0.95x,
12-megapixel photos 0.98x). So this path takes only files that decode (at
the DCT scale Pillow's ``draft`` would choose) to exactly the input size:
baseline or progressive YCbCr and grayscale JPEGs without an EXIF block. Everything else (other sizes and
formats, CMYK, an EXIF orientation, a colour file for a grayscale model,
anything simplejpeg rejects or warns about) returns None and goes the
Pillow way, which also gives the reasons for broken files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType

JPEG_START = b"\xff\xd8"
EXIF_HEADER = b"Exif\x00\x00"
DRAFT_SCALES = (8, 4, 2, 1)  # the reductions Pillow's JpegImageFile.draft chooses from


def _simplejpeg() -> ModuleType | None:
    try:
        import simplejpeg
    except ImportError:  # a pinned dependency, but an install without it still decodes everything, through Pillow
        return None
    return simplejpeg


def decode_plain_jpeg(data: bytes, size: tuple[int, int], grayscale: bool, max_pixels: int,
                      draft: bool) -> tuple[np.ndarray, tuple[int, int], str] | None:
    """(pixels (H, W, C) at ``size``, the file's (width, height), its Pillow mode), or None to use Pillow."""
    simplejpeg = _simplejpeg()
    if simplejpeg is None or not data.startswith(JPEG_START) or EXIF_HEADER in data:
        return None  # an EXIF block may rotate the image: Pillow reads it (any file with one, to be exact)
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if width * height > max_pixels or colorspace not in ("YCbCr", "Gray") or (grayscale and colorspace != "Gray"):
            return None
        scale = _draft_scale((width, height), max(size)) if draft else 1
        if (-(-height // scale), -(-width // scale)) != size:  # a resize follows: Pillow is as fast
            return None
        rows, columns = size if scale > 1 else (0, 0)
        pixels = simplejpeg.decode_jpeg(data, "GRAY" if grayscale else "RGB", min_height=rows, min_width=columns)
    except ValueError:
        return None
    return pixels, (width, height), "L" if colorspace == "Gray" else "RGB"


def _draft_scale(image_size: tuple[int, int], side: int) -> int:
    """The reduction Pillow's ``draft(mode, (side, side))`` applies: the largest of 8, 4, 2, 1 that still covers."""
    fits = min(image_size[0] // side, image_size[1] // side)
    return next(scale for scale in DRAFT_SCALES if fits >= scale or scale == 1)
