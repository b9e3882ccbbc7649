"""inspect's quality checks and outliers: each check on generated images that have the problem and that do not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, run_cli
from PIL import Image, ImageEnhance, ImageFilter

from imgclf import api
from imgclf.data.quality import find_quality_issues, measure
from imgclf.embeddings.outliers import find_outliers

SIDE = 128


def textured(seed: int, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    """A clean 'photo': rectangles of random colours with sharp edges, plus a little noise."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.int16)
    pixels[:] = rng.integers(40, 200, 3)
    for _ in range(12):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        pixels[y:y + rng.integers(8, 48), x:x + rng.integers(8, 48)] = rng.integers(20, 235, 3)
    pixels += rng.integers(-12, 13, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def problems() -> dict[str, Image.Image]:
    """One image with each problem, named by the check that must flag it."""
    base = textured(999)
    washed = (200 + np.asarray(base, dtype=np.float32) * 0.2).astype(np.uint8)
    levels = np.repeat(np.repeat(np.random.default_rng(1).integers(0, 4, (4, 4)), 32, 0), 32, 1)
    palette = np.array([[200, 40, 40], [40, 160, 60], [50, 60, 210], [230, 210, 40]], dtype=np.uint8)
    flat = np.clip(np.full((SIDE, SIDE, 3), (120, 80, 60)) + np.random.default_rng(2).integers(-1, 2, (SIDE, SIDE, 3)),
                   0, 255).astype(np.uint8)
    return {"blurry": base.filter(ImageFilter.GaussianBlur(4)),
            "dark": ImageEnhance.Brightness(base).enhance(0.2),
            "bright": Image.fromarray(washed),
            "low-information": Image.fromarray(palette[levels]),
            "near-constant": Image.fromarray(flat),
            "grayscale": base.convert("L"),
            "odd-size": base.resize((24, 24), Image.Resampling.LANCZOS),
            "odd-aspect": textured(998, (5 * SIDE, SIDE))}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """inspect's report.json on 30 clean photos and one photo with each problem."""
    root = tmp_path_factory.mktemp("quality") / "data"
    for index in range(30):
        path = root / ("a" if index % 2 else "b") / f"clean-{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        textured(index).save(path)
    for kind, image in problems().items():
        image.save(root / "a" / f"{kind}.png")
    result = run_cli("inspect", str(root), "--out", str(root.parent / "report"))
    assert result.returncode == 0, result.stderr
    return {"report": json.loads((root.parent / "report" / "report.json").read_text()), "output": result.stdout + result.stderr,
            "out": root.parent / "report"}


@pytest.mark.parametrize("kind", list(problems()))
def test_each_check_flags_its_problem(checked: dict, kind: str) -> None:
    issues = checked["report"]["quality"]["issues"]
    flagged = {Path(issue["path"]).stem for issue in issues if issue["kind"] == kind}
    assert kind in flagged, (kind, flagged)
    check = next(check for check in checked["report"]["quality"]["checks"] if check["kind"] == kind)
    entry = next(issue for issue in issues if issue["kind"] == kind and Path(issue["path"]).stem == kind)
    assert (entry["score"] < check["threshold"]) if check["flagged_when"] == "below" else \
        (entry["score"] > check["threshold"])
    assert entry["labels"] == ["a"] and entry["split"] == "unsplit"


def test_clean_photos_are_not_flagged_and_findings_are_drawn(checked: dict) -> None:
    issues = checked["report"]["quality"]["issues"]
    assert not [issue for issue in issues if Path(issue["path"]).stem.startswith("clean")]
    assert "image(s) blurry (few sharp edges" in checked["output"]
    assert (checked["out"] / "findings.png").is_file() and "findings.png" in checked["output"]


def test_a_sharp_dark_photo_is_dark_not_blurry_and_a_flat_one_is_only_near_constant() -> None:
    dark = measure(ImageEnhance.Brightness(textured(5)).enhance(0.2))
    flat = measure(problems()["near-constant"])
    sizes = np.full(3, SIDE)
    issues, _ = find_quality_issues(np.stack([measure(textured(4)), dark, flat]), sizes, sizes)
    assert sorted((issue.index, issue.kind) for issue in issues) == [(1, "dark"), (2, "near-constant")]


def test_grayscale_is_only_checked_among_colour_photos() -> None:
    grey = np.stack([measure(textured(seed).convert("L").convert("RGB")) for seed in range(10)])
    sizes = np.full(10, SIDE)
    issues, notes = find_quality_issues(grey, sizes, sizes)
    assert not [issue for issue in issues if issue.kind == "grayscale"]
    assert notes == ["grayscale: not checked, 0% of the images are in colour (the check runs from 90%)"]


def test_the_measures_are_kept_with_the_decode_cache(checked: dict, tmp_path: Path) -> None:
    source = Path(checked["report"]["source"])
    first = api.inspect(source, out=tmp_path / "again")
    assert first.report.quality == checked["report"]["quality"]  # the cached facts give the same findings


def test_outliers_are_far_from_their_class_and_get_the_class_they_look_like() -> None:
    rng = np.random.default_rng(0)
    centres = {"cat": rng.normal(size=16), "dog": rng.normal(size=16)}
    labels = ["cat"] * 20 + ["dog"] * 20
    vectors = np.stack([centres[label] + 0.3 * rng.normal(size=16) for label in labels])
    vectors[3] = centres["dog"] + 0.3 * rng.normal(size=16)  # a dog photo in the cat folder
    found = find_outliers(labels, vectors)
    assert [(outlier.index, outlier.nearest_class) for outlier in found] == [(3, "dog")]


def test_inspect_outliers_with_a_trained_model_and_without_weights(tiny_run: Path, tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=12)
    shutil.move(data / "red" / "003.png", data / "green" / "red-003.png")
    out = tmp_path / "report"
    result = run_cli("inspect", str(data), "--out", str(out), "--outliers", "--embedding-model", str(tiny_run))
    assert result.returncode == 0, result.stderr
    outliers = json.loads((out / "report.json").read_text())["outliers"]
    first = outliers["issues"][0]
    assert Path(first["path"]).name == "red-003.png" and first["nearest_class"] == "red" and first["labels"] == ["green"]
    assert "outlier (far from the rest of their class)" in result.stdout + result.stderr
    refused = run_cli("inspect", str(data), "--out", str(out), "--outliers", "--embedding-model", "fastnet", "--json")
    assert refused.returncode == 0, refused.stderr
    note = json.loads(refused.stdout)["outliers"]["note"]
    assert note.startswith("outliers: not searched, fastnet cannot embed here (no pretrained weights exist")
