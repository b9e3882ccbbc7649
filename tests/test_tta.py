"""Test-time augmentation in the Classifier: the mirror, and airbench's shifted mirror pairs with ``tta_shift``."""

from __future__ import annotations

import numpy as np

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


def classify(shift: int, tta: bool = True) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    info = BundleInfo(architecture="fastnet", model_args={}, classes=[str(n) for n in range(6)], image_size=6,
                      mean=[0.0] * 3, std=[1.0] * 3, tta=tta, tta_shift=shift)
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
