"""Grad-CAM explanations: the map has the image's shape, peaks on what the decision rests on, and is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

import imgclf

SIZE, SIDE = 32, 6  # image side, planted square side


def planted_square_data(root: Path, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Noisy dark images; class 'square' has one bright 6 px square somewhere, 'plain' none. Square corners by path."""
    rng = np.random.default_rng(seed)
    corners = {}
    for split, count in (("train", 40), ("val", 8), ("test", 4)):
        for label in ("square", "plain"):
            for number in range(count):
                pixels = rng.integers(20, 90, (SIZE, SIZE, 3)).astype(np.uint8)
                path = root / split / label / f"{number}.png"
                if label == "square":
                    y, x = (int(v) for v in rng.integers(0, SIZE - SIDE, 2))
                    pixels[y:y + SIDE, x:x + SIDE] = 250
                    corners[str(path)] = (y, x)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return corners


@pytest.fixture(scope="module")
def square_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A small CNN (8x8 last feature map) that learned the class is the square's presence."""
    root = tmp_path_factory.mktemp("explain")
    corners = planted_square_data(root / "data")
    run = imgclf.train(root / "data", out=root / "run", model="tutorial-cnn", epochs=6, batch_size=16, lr=3e-3,
                       precision="fp32", workers=1,
                       model_args={"widths": [8, 16], "hidden": 32})
    assert run.metrics["test_accuracy"] == 1.0
    return run.run_dir, corners


@pytest.mark.slow
def test_the_map_has_the_image_s_shape_and_peaks_inside_the_planted_square(square_run) -> None:
    run, corners = square_run
    tested = [path for path in corners if "/test/" in path]
    for path in tested:
        explanation = imgclf.explain(run, path, top_k=2)
        assert explanation.map.shape == (SIZE, SIZE) and explanation.maps.shape == (2, SIZE, SIZE)
        assert explanation.top[0][0] == "square" and 0.0 <= explanation.map.min() and explanation.map.max() == 1.0
        y, x = corners[path]
        peak_y, peak_x = np.unravel_index(explanation.map.argmax(), explanation.map.shape)
        assert y <= peak_y < y + SIDE and x <= peak_x < x + SIDE, (path, (peak_y, peak_x), (y, x))


@pytest.mark.slow
def test_explain_command_writes_overlays_and_skips_a_broken_image(square_run, tmp_path: Path) -> None:
    run, corners = square_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image = next(path for path in corners if "/test/" in path)
    result = run_cli("explain", str(run), image, str(broken), "--out", str(tmp_path / "why"), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "why" / f"{Path(image).stem}.gradcam.png"
    assert written.is_file() and Image.open(written).size[0] > 2 * SIZE
    assert "square" in result.stderr and "skipped" in result.stderr and "broken.png" in result.stderr


def test_a_model_without_a_spatial_feature_map_is_refused_in_one_line(tmp_path: Path) -> None:
    from imgclf.deploy.bundle import BundleInfo, write_bundle
    from imgclf.models import create_model

    model = create_model("test_vit", 2)
    info = BundleInfo(architecture="test_vit", model_args={}, classes=["a", "b"], image_size=160,
                      mean=[0.5] * 3, std=[0.5] * 3)
    write_bundle(info, model.state_dict(), tmp_path / "vit")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    result = run_cli("explain", str(tmp_path / "vit"), str(image), "--out", str(tmp_path / "why"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "test_vit has no spatial feature map" in result.stderr and "token sequences" in result.stderr
