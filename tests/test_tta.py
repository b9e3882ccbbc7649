"""Test-time augmentation in the Classifier: the mirror, airbench's shifted mirror pairs with ``tta_shift``, and the
zoomed centre crop and its mirror with ``tta_zoom``."""

from __future__ import annotations

import numpy as np

from imgclf.data.views import image_views, view_of, zoomed
from imgclf.deploy.bundle import BundleInfo
from imgclf.deploy.classifier import Classifier


class RecordingRuntime:
    """Logits that say which call they came from (one-hot on the call number); the views are kept."""

    def __init__(self) -> None:
        self.views: list[np.ndarray] = []

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        self.views.append(np.array(pixels))
        row = np.zeros(6, dtype=np.float32)
        row[len(self.views) - 1] = 1.0
        return np.repeat(row[None], len(pixels), axis=0)


def classify(shift: int, tta: bool = True, zoom: float = 0.0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    info = BundleInfo(architecture="fastnet", model_args={}, classes=[str(n) for n in range(6)], image_size=6,
                      mean=[0.0] * 3, std=[1.0] * 3, tta=tta, tta_shift=shift, tta_zoom=zoom)
    runtime = RecordingRuntime()
    return Classifier(runtime, info).logits(pixels), runtime.views, pixels  # type: ignore[arg-type]


def test_flip_tta_averages_the_image_and_its_mirror() -> None:
    logits, views, pixels = classify(shift=0)
    assert len(views) == 2 and np.array_equal(views[1], pixels[:, :, ::-1])
    np.testing.assert_allclose(logits[0], [0.5, 0.5, 0, 0, 0, 0])
    assert len(classify(shift=1, tta=False)[1]) == 1  # --no-tta: the plain image only


def test_shifted_tta_adds_two_mirror_pairs_shifted_diagonally_with_reflected_borders() -> None:
    logits, views, pixels = classify(shift=1)
    assert len(views) == 6
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :6, :6], padded[:, 2:8, 2:8]
    for view, expected in zip(views[2:], (up_left, up_left[:, :, ::-1], down_right, down_right[:, :, ::-1])):
        assert np.array_equal(view, expected)
    assert np.array_equal(up_left[:, 1:, 1:], pixels[:, :-1, :-1])  # a true one-pixel shift
    # half the weight on the unshifted pair, a quarter on each shifted pair
    np.testing.assert_allclose(logits[0], [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def test_zoomed_tta_averages_the_views_the_photo_recipe_trains_on() -> None:
    logits, views, pixels = classify(shift=0, zoom=0.5)
    trained_on = image_views(True, 0.5)
    assert trained_on == ["plain", "hflip", "zoom0.5", "zoom0.5-hflip"]
    assert len(views) == 4
    for view, name in zip(views, trained_on):
        assert np.array_equal(view, view_of(pixels, name))  # the training rows' pixels exactly
    np.testing.assert_allclose(logits[0], [0.25, 0.25, 0.25, 0.25, 0, 0])


def test_a_zoomed_view_is_the_centre_crop_resized_back_to_the_input_size() -> None:
    import pytest

    pixels = np.zeros((1, 8, 8, 1), dtype=np.uint8)
    pixels[0, 2:6, 2:6] = 200  # a bright centre square: half of each side
    centre = zoomed(pixels, 0.5)
    assert centre.shape == pixels.shape and centre.dtype == np.uint8
    assert (centre == 200).all()  # the centre half fills the whole image
    assert np.array_equal(view_of(pixels, "zoom0.5-hflip"), centre[:, :, ::-1])
    with pytest.raises(ValueError, match="unknown image view 'zoom1.5'"):
        view_of(pixels, "zoom1.5")
