"""Embeddings: the per-image cache, the folded inference copy, similarity, the index, matching, near-duplicates."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image, ImageDraw, ImageOps

import imgclf
from imgclf import api
from imgclf.embeddings.embedder import Embedder
from imgclf.embeddings.store import MERGE_AFTER_CHUNKS, EmbeddingStore, image_key
from imgclf.embeddings.tables import read_items
from imgclf.errors import ImgclfError
from imgclf.models import create_model
from imgclf.models.folding import inference_copy

SIZE = 64  # backbone input side in these tests: small enough to be fast, large enough for real features


def textured(path: Path, seed: int, size: int = 96) -> Path:
    """A picture with content an ImageNet backbone tells apart: a coloured wave pattern under random shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    fx, fy = rng.uniform(2, 12), rng.uniform(-12, 12)
    wave = np.stack([np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 6.3) + channel) for channel in range(3)], -1)
    low, high = rng.uniform(0, 255, (2, 3))
    image = Image.fromarray((low + (high - low) * (wave + 1) / 2).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 9)):
        (left, right), (top, bottom) = np.sort(rng.integers(0, size, 2)), np.sort(rng.integers(0, size, 2))
        box = [int(left), int(top), int(right) + 8, int(bottom) + 8]
        colour = tuple(int(value) for value in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(2, 6)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def lite0() -> Embedder:
    """The real ImageNet backbone installed with imgclf, at a small input size (its cache in this test's home)."""
    return Embedder.load("tf_efficientnet_lite0", image_size=SIZE, precision="fp32")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for number in range(12):
        textured(folder / f"item{number:02d}.png", seed=number)
    return folder


def test_store_round_trip_and_merge(tmp_path: Path) -> None:
    store = EmbeddingStore({"model": "m"}, root=tmp_path)
    rng = np.random.default_rng(0)
    written = {}
    for chunk in range(MERGE_AFTER_CHUNKS + 1):  # one more than the limit: the chunks are merged into one
        keys = [f"k{chunk}-{i}" for i in range(3)]
        vectors = rng.normal(size=(3, 8)).astype(np.float32)
        store.put(keys, vectors)
        written.update(zip(keys, vectors))
    assert len(list(store.directory.glob("chunk-*.npy"))) == 1
    keys = list(written)[::-1] + ["absent", None]
    vectors, found = EmbeddingStore({"model": "m"}, root=tmp_path).get(keys)
    assert found.tolist() == [True] * len(written) + [False, False]
    expected = np.stack([written[key] for key in keys[:-2]]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(vectors[:-2], expected)
    assert not vectors[-2:].any()
    assert EmbeddingStore({"model": "other"}, root=tmp_path).get(keys)[0] is None


def test_folded_copy_agrees_with_the_model_and_leaves_it_alone() -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet", 5).eval()
    with torch.no_grad():  # give BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = torch.randn(4, 3, 32, 32)
    folded = inference_copy(model, images[:1])
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(images.contiguous(memory_format=torch.channels_last)), model(images),
                                   rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.slow
def test_cache_is_reused_and_invalidated_by_a_changed_file(gallery: Path, tmp_path: Path, lite0: Embedder) -> None:
    files = [textured(tmp_path / f"{n}.png", seed=100 + n) for n in range(5)]
    first = lite0.embed_files(files)
    assert (first.computed, first.reused) == (5, 0)
    again = Embedder.load("tf_efficientnet_lite0", image_size=SIZE, precision="fp32").embed_files(files)
    assert (again.computed, again.reused) == (0, 5)
    np.testing.assert_array_equal(first.vectors, again.vectors)  # float16 both times: identical numbers
    textured(files[2], seed=999)
    os.utime(files[2], ns=(1, 1))  # a new mtime, as an edit gives
    changed = lite0.embed_files(files)
    assert (changed.computed, changed.reused) == (1, 4)
    assert not np.allclose(changed.vectors[2], first.vectors[2])
    other_size = Embedder.load("tf_efficientnet_lite0", image_size=SIZE + 32, precision="fp32")
    assert other_size.embed_files(files).computed == 5  # other preprocessing, other cache


@pytest.mark.slow
def test_unreadable_files_are_reported_not_fatal(tmp_path: Path, lite0: Embedder) -> None:
    good = textured(tmp_path / "good.png", seed=1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = lite0.embed_files([good, broken, tmp_path / "missing.png"])
    assert result.ok.tolist() == [True, False, False]
    assert all(result.errors[1:]) and not result.vectors[1:].any()


@pytest.mark.slow
def test_similarity_of_an_image_with_itself_a_mirror_and_a_stranger(tmp_path: Path) -> None:
    original = textured(tmp_path / "a.png", seed=7, size=128)
    mirrored = tmp_path / "mirror.png"
    ImageOps.mirror(Image.open(original)).save(mirrored)
    stranger = textured(tmp_path / "b.png", seed=8, size=128)
    assert imgclf.similar("tf_efficientnet_lite0", original, original) == pytest.approx(1.0, abs=1e-3)
    mirror_score = imgclf.similar("tf_efficientnet_lite0", original, mirrored)
    stranger_score = imgclf.similar("tf_efficientnet_lite0", original, stranger)
    assert mirror_score >= 0.9 > stranger_score
    with pytest.raises(ImgclfError, match="missing.png"):
        imgclf.similar("tf_efficientnet_lite0", original, tmp_path / "missing.png")


@pytest.mark.slow
def test_index_query_finds_the_planted_neighbour(gallery: Path, tmp_path: Path) -> None:
    planted = tmp_path / "query.jpg"
    Image.open(gallery / "item05.png").resize((80, 80)).save(planted, quality=85)  # resized, re-encoded copy
    result = run_cli("index", "build", "tf_efficientnet_lite0", str(gallery), "--out", str(tmp_path / "index"))
    assert result.returncode == 0, result.stderr
    assert "indexed 12 images" in result.stderr
    result = run_cli("index", "query", str(tmp_path / "index"), str(planted), "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert Path(answer[0]["neighbours"][0]["image"]).name == "item05.png"
    assert len(answer[0]["neighbours"]) == 3
    assert answer[0]["neighbours"][0]["score"] > answer[0]["neighbours"][1]["score"]


@pytest.mark.slow
def test_index_from_a_csv_keeps_its_columns_and_refuses_bad_input(gallery: Path, tmp_path: Path) -> None:
    table = tmp_path / "items.csv"
    table.write_text("image,sku\n" + "".join(f"{gallery.name}/item{n:02d}.png,SKU-{n}\n" for n in range(4)))
    os.symlink(gallery, tmp_path / gallery.name)
    index, skipped = api.build_index("tf_efficientnet_lite0", table, tmp_path / "index")
    assert len(index) == 4 and not skipped
    hits = api.query_index(tmp_path / "index", [gallery / "item02.png"], k=2)[0][1]
    assert hits[0].item["sku"] == "SKU-2" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    (tmp_path / "bad.csv").write_text("path,sku\nx.png,1\n")
    with pytest.raises(ImgclfError, match="no 'image' column"):
        api.build_index("tf_efficientnet_lite0", tmp_path / "bad.csv", tmp_path / "index2")
    with pytest.raises(ImgclfError, match="not an index folder"):
        api.query_index(tmp_path, [gallery / "item02.png"])


def test_a_symlink_loop_in_a_catalogue_is_listed_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    (tmp_path / "items.csv").write_text("image,sku\nloop_a.png,1\n")
    rows = read_items(tmp_path / "items.csv")
    assert rows == [{"image": str(tmp_path / "loop_a.png"), "sku": "1"}]
    assert image_key(Path(rows[0]["image"])) is None  # unreadable: embedded as an error, never a crash


# ----------------------------------------------------------------- product matching
CATEGORY_SEEDS = {"shoes": 1000, "bags": 2000, "hats": 3000}
CATEGORY_WORDS = {"shoes": "running shoe", "bags": "leather bag", "hats": "wool hat"}


def make_catalog(folder: Path, per_category: int = 10, names: str = "descriptive") -> Path:
    """A catalogue whose photos of one category are variants of one picture, named by category or at random."""
    rng = np.random.default_rng(0)
    rows = []
    for category, seed in CATEGORY_SEEDS.items():
        base = np.array(Image.open(textured(folder / "base" / f"{category}.png", seed, size=96)))
        for number in range(per_category):
            noisy = np.clip(base + rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8)
            path = folder / "images" / f"{category}{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(noisy, number * 3, axis=1)).save(path)
            name = (f"{CATEGORY_WORDS[category]} model {number}" if names == "descriptive"
                    else " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"], 2)))
            rows.append({"image": f"images/{category}{number}.png", "name": name, "category": category,
                         "sku": f"{category[:2].upper()}{number:03d}"})
    catalog = folder / "catalog.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "name", "category", "sku"])
        writer.writeheader()
        writer.writerows(rows)
    return catalog


@pytest.mark.slow
def test_match_suggests_the_planted_category(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path)
    photo = tmp_path / "new.png"
    Image.open(tmp_path / "base" / "bags.png").save(photo)
    by_photo = api.match(catalog, image=photo)
    assert by_photo.category == "bags" and by_photo.matches[0].item["category"] == "bags"
    by_name = api.match(catalog, name="Leather BAG, brown")
    assert by_name.category == "bags" and by_name.matches[0].name_score > 0.5
    result = run_cli("match", str(catalog), "--image", str(photo), "--name", "wool hat", "--image-weight", "0.8",
                     "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["category"] == "bags"  # the photo outweighs the name at 0.8
    assert {"score", "image_score", "name_score", "sku", "category"} <= set(answer["matches"][0])
    result = run_cli("match", str(catalog))
    assert result.returncode == 2 and "--image, --name or both" in result.stderr


# ----------------------------------------------------------------- the CLI and the rest of the tool
@pytest.mark.slow
def test_embed_cli_then_a_probe_reuses_the_embeddings(tmp_path: Path, backbone_weights: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import make_class_folder

    data = make_class_folder(tmp_path / "data", per_class=8)
    result = run_cli("embed", "test_resnet", str(data), "--weights", str(backbone_weights), "--image-size", "32",
                     "--out", str(tmp_path / "e.npz"))
    assert result.returncode == 0, result.stderr
    assert "computed now" in result.stderr and "24" in result.stderr
    saved = np.load(tmp_path / "e.npz", allow_pickle=False)
    assert saved["vectors"].shape[0] == 24 and len(saved["paths"]) == 24
    embedded = []
    real_embed = Embedder.embed_pixels
    monkeypatch.setattr(Embedder, "embed_pixels",
                        lambda self, pixels: embedded.append(len(pixels)) or real_embed(self, pixels))
    run = imgclf.train(data, out=tmp_path / "run", model="test_resnet", pretrained=True, weights=str(backbone_weights),
                       strategy="probe", tta=False, image_size=32, workers=1)  # embed has no mirror view
    assert sum(embedded) == 0  # train, val and test were embedded by `imgclf embed` already
    # the probe's bundle is an ordinary model: evaluated by a forward pass, it scores what the embeddings said
    evaluation = imgclf.evaluate(run.run_dir, out=tmp_path / "evaluation")
    tested = run.metrics["test_images"]
    assert abs(evaluation.metrics["accuracy"] - run.metrics["test_accuracy"]) <= 1 / tested + 1e-9
    probe_bundle = Embedder.load(run.run_dir, precision="fp32")  # a trained model embeds too
    assert probe_bundle.embed_files([next(data.rglob("*.png"))]).ok.all()


@pytest.mark.slow
def test_inspect_near_duplicates_flags_leakage(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split, numbers in (("train", range(0, 6)), ("test", range(6, 9))):
        for number in numbers:
            textured(data / split / ("even" if number % 2 == 0 else "odd") / f"{number}.png", seed=number)
    ImageOps.mirror(Image.open(data / "train" / "even" / "2.png")).save(data / "test" / "even" / "copy.png")
    exact = data / "test" / "odd" / "same-bytes.png"
    exact.write_bytes((data / "train" / "odd" / "1.png").read_bytes())
    result = api.inspect(data, out=tmp_path / "report", near_duplicates=True)
    pairs = result.report.near_duplicates
    # the mirrored copy is found; the byte-identical copy is left to the exact-duplicate report
    assert [({Path(path).name for path in pair["paths"]}, pair["kind"]) for pair in pairs] == [
        ({"copy.png", "2.png"}, "leakage")]
    assert any(group.kind == "leakage" and exact in group.paths for group in result.report.duplicates)
    assert any("near-duplicate pair(s) across splits" in warning for warning in result.report.warnings)
    assert result.near_duplicates_picture is not None and result.near_duplicates_picture.is_file()
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["near_duplicates"][0]["kind"] == "leakage"
