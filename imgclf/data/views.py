"""Views of a decoded image: the image, its mirror, and a zoomed centre crop (and its mirror).

A frozen pretrained trunk gives an image the same features every epoch, so
the cheap augmentation of the photo recipe is a few fixed views of each
image, embedded once: more training rows for the probe and the tail
(:mod:`imgclf.engines.tail`), and the views test-time augmentation averages.
The training rows and the TTA views must be the same pixels, and the
Classifier (:mod:`imgclf.deploy.classifier`) makes its views from the
decoded input-size array without torch (an ONNX bundle needs none), so the
zoom is made here the same way for both: the centre crop of ``fraction`` of
each side, resized back to the input size by PIL (bilinear). Made from the
decoded array, a zoomed view needs no second decode of the JPEG files.

A view is named by a string, which is part of the embedding cache's key:
``plain``, ``hflip``, ``zoom0.875`` and ``zoom0.875-hflip``.
"""

from __future__ import annotations

import numpy as np

PLAIN, MIRROR = "plain", "hflip"
ZOOM_PREFIX = "zoom"


def zoom_view(fraction: float) -> str:
    """The name of the view that zooms into the centre ``fraction`` of each side."""
    return f"{ZOOM_PREFIX}{fraction:g}"


def image_views(tta: bool, zoom: float = 0.0) -> list[str]:
    """The views a model trains on and averages over: the image, with ``tta`` its mirror, with ``zoom`` both zoomed.

    The order alternates the mirror, so a loader cycling through the views
    epoch by epoch flips every image every epoch (airbench's alternating flip).
    """
    views = [PLAIN, MIRROR] if tta else [PLAIN]
    if tta and zoom:
        views += [zoom_view(zoom), f"{zoom_view(zoom)}-{MIRROR}"]
    return views


def zoomed(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """(N, H, W, C) uint8 images: each one's centre ``fraction`` of height and width, resized back to (H, W)."""
    from PIL import Image

    count, height, width, channels = pixels.shape
    crop_height, crop_width = round(height * fraction), round(width * fraction)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    out = np.empty_like(pixels)
    for index in range(count):
        crop = np.ascontiguousarray(pixels[index, top:top + crop_height, left:left + crop_width])
        image = Image.fromarray(crop[:, :, 0] if channels == 1 else crop)
        resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
        out[index] = resized[:, :, None] if channels == 1 else resized
    return out


def view_of(pixels: np.ndarray, view: str) -> np.ndarray:
    """``pixels`` (N, H, W, C) as ``view`` sees them; an unknown view name is a ValueError."""
    base, mirrored = view, False
    if view == MIRROR:
        base, mirrored = PLAIN, True
    elif view.endswith(f"-{MIRROR}"):
        base, mirrored = view[:-len(MIRROR) - 1], True
    fraction = _zoom_fraction(base)
    if base == PLAIN:
        out = pixels
    elif fraction is not None:
        out = zoomed(pixels, fraction)
    else:
        raise ValueError(f"unknown image view {view!r}; expected plain, hflip, zoomF or zoomF-hflip (0 < F < 1)")
    return out[:, :, ::-1] if mirrored else out


def _zoom_fraction(view: str) -> float | None:
    """F of a ``zoomF`` view name (0 < F < 1), else None."""
    if not view.startswith(ZOOM_PREFIX):
        return None
    try:
        value = float(view[len(ZOOM_PREFIX):])
    except ValueError:
        return None
    return value if 0 < value < 1 else None
