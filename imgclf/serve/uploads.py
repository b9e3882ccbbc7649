"""Request bodies to decoded images, or an :class:`ApiError` with the right 4xx and a message that says what to send.

Accepted: ``multipart/form-data`` with one or more file parts (any field
name), or a raw body whose ``Content-Type`` is an image type. Every image is
checked before it is decoded (type, size in pixels) and decoded by the same
code as training (``imgclf.data.decode``), so a truncated or fake file is a
400, never a crash.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from imgclf.data.decode import decode_bytes
from imgclf.deploy.bundle import BundleInfo

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")
GENERIC_TYPE = "application/octet-stream"  # what many clients send for a file; the bytes decide
MULTIPART_PARTS = 1000  # starlette's own cap on parts; ours (--max-files) is checked after, with a clearer message


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_files: int = 16
    timeout_s: float = 30.0


DEFAULT_LIMITS = Limits()


@dataclass
class Upload:
    name: str
    content_type: str
    data: bytes


def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The images a request carries, before decoding; raises ApiError for a body of the wrong kind or size."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        raise body_too_large(limits)
    kind = media_type(request.headers.get("content-type"))
    if kind == "multipart/form-data":
        form = await request.form(max_files=MULTIPART_PARTS, max_fields=MULTIPART_PARTS)
        uploads = [Upload(value.filename or key, media_type(value.content_type), await value.read())
                   for key, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise ApiError(400, "the multipart body has no file parts; send images as files, e.g. "
                                "curl -F file=@cat.jpg")
    elif kind in IMAGE_TYPES or kind == GENERIC_TYPE:
        uploads = [Upload("body", kind, await request.body())]
    else:
        raise ApiError(415, f"Content-Type '{kind or 'none'}' is not accepted; send an image "
                            f"({', '.join(IMAGE_TYPES)}) as the body or as multipart/form-data files")
    if len(uploads) > limits.max_files:
        raise ApiError(413, f"{len(uploads)} files in one request; at most {limits.max_files} (--max-files) are accepted")
    for upload in uploads:
        if upload.content_type not in IMAGE_TYPES and upload.content_type not in (GENERIC_TYPE, ""):
            raise ApiError(415, f"{upload.name}: Content-Type '{upload.content_type}' is not an image type; "
                                f"accepted: {', '.join(IMAGE_TYPES)}")
        if not upload.data:
            raise ApiError(400, f"{upload.name}: empty file (0 bytes); send the image's bytes")
    return uploads


def body_too_large(limits: Limits) -> ApiError:
    return ApiError(413, f"request body over {limits.max_bytes:,} bytes (--max-upload-mb); send smaller or fewer images")


def decode_uploads(uploads: list[Upload], info: BundleInfo, limits: Limits) -> np.ndarray:
    """(N, H, W, C) uint8 at the model's input size; runs in a worker thread (Pillow releases the GIL)."""
    size = (info.image_size, info.image_size)
    pixels = np.zeros((len(uploads), *size, info.channels), dtype=np.uint8)
    for index, upload in enumerate(uploads):
        try:
            with Image.open(io.BytesIO(upload.data)) as header:  # reads the header only
                width, height = header.size
        except Exception:  # noqa: BLE001  Pillow raises many types for bytes that are not an image
            raise ApiError(400, f"{upload.name}: not an image (unrecognised format); send a JPEG, PNG, WebP, BMP, "
                                "GIF or TIFF file") from None
        if width * height > limits.max_pixels:
            raise ApiError(413, f"{upload.name}: {width}x{height} = {width * height:,} pixels, over the limit of "
                                f"{limits.max_pixels:,} (--max-pixels); send a smaller image")
        decoded = decode_bytes(upload.data, size, info.resize, info.channels == 1, limits.max_pixels)
        if decoded.pixels is None:
            raise ApiError(400, f"{upload.name}: {decoded.error}")
        pixels[index] = decoded.pixels
    return pixels
