"""--strategy tail: the probe, then the trunk's last blocks trained on kept activations, shipped as one bundle."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, run_cli, save_pretend_weights

from imgclf.training import TrainResult

MODEL = "test_efficientnet"  # timm's tiny EfficientNet: five blocks, the layout the tail is cut from
TAIL = dict(model=MODEL, strategy="tail", image_size=32, workers=1, precision="fp32", batch_size=8, epochs=4,
            monitor="val_loss")


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """What imgclf logged since the last call (then forgotten)."""
    text = caplog.text
    caplog.clear()
    return text



@pytest.fixture(scope="module")
def efficientnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'Pretrained' weights of the tiny EfficientNet."""
    return save_pretend_weights(MODEL, tmp_path_factory.mktemp("efficientnet") / "weights.safetensors")


def train(data: Path, out: Path, weights: Path, **options: object) -> TrainResult:
    """A tail run through training itself (the report page, which costs seconds, is not what is tested)."""
    from imgclf.config import make_config
    from imgclf.training import train as run_training

    return run_training(make_config(data=str(data), out=str(out), weights=str(weights), **{**TAIL, **options}))


@pytest.fixture(scope="module")
def tail_run(efficientnet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    root = tmp_path_factory.mktemp("tail")
    data = make_class_folder(root / "data", per_class=12)
    return root / "run", train(data, root / "run", efficientnet_weights)


@pytest.mark.slow
def test_the_tail_trains_only_its_blocks_and_writes_one_row_per_epoch(efficientnet_weights: Path,
                                                                     tail_run: tuple[Path, TrainResult]) -> None:
    from safetensors.torch import load_file

    run, result = tail_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [row["stage"] for row in rows] == ["probe", "tail", "tail", "tail"]
    assert all(float(row["val_loss"]) > 0 for row in rows)
    pretrained, trained = load_file(str(efficientnet_weights)), load_file(str(run / "model" / "weights.safetensors"))
    last_block = "blocks.4."  # --tail-blocks 1: the fifth and last block, with conv_head, bn2 and the classifier
    learns = (last_block, "conv_head.", "bn2.weight", "bn2.bias")
    for name, value in trained.items():
        if name.startswith("classifier."):
            continue  # a new head of 3 classes (fitted by the probe, then trained)
        if "running_" in name or "num_batches" in name:
            assert (value == pretrained[name]).all(), f"{name}: BatchNorm statistics stay frozen"
        elif name.startswith(learns):
            assert not (value == pretrained[name]).all(), f"{name} is in the tail and should have trained"
        else:
            assert (value == pretrained[name]).all(), f"{name} is in the frozen part and changed"


@pytest.mark.slow
def test_the_bundle_predicts_what_the_trained_model_scored(tail_run: tuple[Path, TrainResult]) -> None:
    """The shipped epoch's val loss (from the kept activations through the in-memory tail) is the bundle's."""
    import torch
    import torch.nn.functional as F

    import imgclf
    from imgclf.data.decode import decode_file

    run, result = tail_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    shipped = rows[result.metrics["best_epoch"] - 1]
    assert shipped["stage"] == "tail"
    val = [(Path(row["path"]), row["label"]) for row in csv.DictReader((run / "split.csv").open())
           if row["split"] == "val"]
    classifier = imgclf.load(run, tta=False, precision="fp32")
    pixels = np.stack([decode_file(path, (32, 32), "crop").pixels for path, _ in val])
    targets = torch.tensor([classifier.classes.index(label) for _, label in val])
    loss = float(F.cross_entropy(torch.from_numpy(classifier.logits(pixels)).float(), targets))
    assert loss == pytest.approx(float(shipped["val_loss"]), rel=1e-2)  # float16 activations: 1e-3 apart


@pytest.mark.slow
def test_a_tail_too_large_for_memory_falls_back_to_the_probe(efficientnet_weights: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgclf")
    from imgclf.engines import tail

    monkeypatch.setattr(tail, "memory_limit_bytes", lambda: 1000)
    data = make_class_folder(tmp_path / "data", per_class=4)
    result = train(data, tmp_path / "run", efficientnet_weights)
    assert [row["stage"] for row in result.history] == ["probe"]
    assert result.model_dir is not None and (result.model_dir / "weights.safetensors").is_file()
    assert "tail skipped" in logged(caplog)


@pytest.mark.slow
def test_tail_options_are_checked_with_one_line_errors(efficientnet_weights: Path, backbone_weights: Path,
                                                       tmp_path: Path) -> None:
    from imgclf.errors import ImgclfError

    data = make_class_folder(tmp_path / "data", per_class=4)
    common = [str(data), "--out", str(tmp_path / "run"), "--strategy", "tail", "--image-size", "32",
              "--workers", "1"]
    ours = ["--model", MODEL, "--weights", str(efficientnet_weights)]
    cases = [
        ([*ours, "--tail-blocks", "0"], "--tail-blocks is a number"),
        ([*ours, "--mixup", "0.2"], "--mixup cannot act"),
        ([*ours, "--tta-zoom", "1.5"], "--tta-zoom is the share of each side"),
        (["--model", "test_resnet", "--weights", str(backbone_weights)], "no EfficientNet block layout"),
    ]
    for extra, expected in cases:
        failed = run_cli("train", *common, *extra)
        assert failed.returncode == 2, (extra, failed.stderr)
        assert expected in failed.stderr and "Traceback" not in failed.stderr, (extra, failed.stderr)
    for options, expected in (({"epochs": 1}, "leaves the tail no epochs"), ({"tail_blocks": 9}, "has 5 blocks")):
        with pytest.raises(ImgclfError, match=expected):
            train(data, tmp_path / "python", efficientnet_weights, **options)


@pytest.mark.slow
def test_a_rerun_reads_the_activations_from_disk_and_trains_the_same_model(
        efficientnet_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The frozen part's output is cached per image and view like embeddings: keyed by file and by the cut."""
    caplog.set_level(logging.INFO, logger="imgclf")
    from conftest import make_image
    from safetensors.torch import load_file

    data = make_class_folder(tmp_path / "data", per_class=6)
    first = train(data, tmp_path / "first", efficientnet_weights, epochs=2)
    assert "read from the cache" not in logged(caplog)
    again = train(data, tmp_path / "again", efficientnet_weights, epochs=2)
    said = logged(caplog)
    assert "activations of 30 image views read from the cache" in said and "computed" not in said  # 12 x 2 + 6
    assert first.model_dir is not None and again.model_dir is not None
    weights = [load_file(str(result.model_dir / "weights.safetensors")) for result in (first, again)]
    assert all((weights[0][name] == weights[1][name]).all() for name in weights[0])
    assert first.history[-1]["val_loss"] == again.history[-1]["val_loss"]

    edited = sorted((data / "red").iterdir())[0]
    make_image(edited, (250, 250, 250), seed=99)  # new contents: this image's rows are computed again
    train(data, tmp_path / "edited", efficientnet_weights, epochs=2)
    said = logged(caplog)
    assert "read from the cache" in said and ("29 image views" in said or "28 image views" in said), said
    train(data, tmp_path / "two-blocks", efficientnet_weights, epochs=2, tail_blocks=2)  # another cut: another key
    assert "read from the cache" not in logged(caplog)


def test_each_image_is_seen_in_every_view_and_flips_every_epoch() -> None:
    from imgclf.data.batches import mirrored_rows, view_rows

    seen = np.stack([view_rows(50, 4, seed=3, epoch=epoch) for epoch in range(4)])
    assert all(sorted(column) == [0, 1, 2, 3] for column in seen.T)  # four epochs: each view of each image once
    assert (seen[1:] % 2 != seen[:-1] % 2).all()  # plain/mirror views alternate: every image flips every epoch
    assert len(set(seen[0])) == 4  # the images start in different views
    mirrored = [mirrored_rows(50, 3, epoch) for epoch in range(3)]  # the image loader's flips: view 1 of 2
    assert 10 < mirrored[0].sum() < 40 and (mirrored[1] == ~mirrored[0]).all() and (mirrored[2] == mirrored[0]).all()


@pytest.fixture(scope="module")
def zoom_run(efficientnet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TrainResult]:
    """A tail trained on four views of each image: plain, mirrored, zoomed, zoomed and mirrored."""
    root = tmp_path_factory.mktemp("zoom")
    data = make_class_folder(root / "data", per_class=6)
    return data, root / "run", train(data, root / "run", efficientnet_weights, epochs=2, tta_zoom=0.875)


@pytest.mark.slow
def test_the_zoomed_views_are_training_rows_keyed_by_view_in_the_cache(
        efficientnet_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgclf")

    def said() -> str:
        return " ".join(logged(caplog).split())  # the console wraps its lines

    data = make_class_folder(tmp_path / "data", per_class=6)
    zoomed = train(data, tmp_path / "zoomed", efficientnet_weights, epochs=2, tta_zoom=0.875)
    first = said()
    assert "(4 view(s) of train)" in first and "read from the cache" not in first
    splits = [row["split"] for row in csv.DictReader((tmp_path / "zoomed" / "split.csv").open())]
    train_images, val_images = splits.count("train"), splits.count("val")
    flips = train(data, tmp_path / "flips", efficientnet_weights, epochs=2)  # plain + mirror: the zoom run's rows
    second = said()
    assert f"activations of {2 * train_images + val_images} image views read from the cache" in second
    assert "computed" not in second and "(2 view(s) of train)" in second
    again = train(data, tmp_path / "again", efficientnet_weights, epochs=2, tta_zoom=0.875)
    third = said()
    assert f"activations of {4 * train_images + val_images} image views read from the cache" in third
    assert "computed" not in third
    assert again.history[-1]["val_loss"] == zoomed.history[-1]["val_loss"]  # the same rows: the same model
    assert flips.history[-1]["val_loss"] != zoomed.history[-1]["val_loss"]  # the zoomed rows changed the training


@pytest.mark.slow
def test_zoomed_tta_predicts_serves_and_exports_the_same(zoom_run: tuple[Path, Path, TrainResult]) -> None:
    import json

    from fastapi.testclient import TestClient

    import imgclf
    from imgclf.data.decode import decode_file
    from imgclf.deploy.bundle import read_bundle_info
    from imgclf.deploy.classifier import Classifier
    from imgclf.serve.app import create_app

    data, run, _ = zoom_run
    info = read_bundle_info(run / "model")
    assert info.tta and info.tta_zoom == 0.875
    images = sorted(data.rglob("*.png"))[:3]
    classifier = imgclf.load(run)
    pixels = np.stack([decode_file(image, (32, 32), "crop").pixels for image in images])
    flips_only = Classifier(classifier.runtime, read_bundle_info(run / "model"))
    flips_only.info.tta_zoom = 0.0
    assert not np.allclose(flips_only.logits(pixels), classifier.logits(pixels))  # the zoomed views count
    expected = classifier.predict_pixels(pixels)
    predicted = run_cli("predict", str(run), *map(str, images), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    for row, probabilities in zip(json.loads(predicted.stdout), expected):
        assert row["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    with TestClient(create_app(classifier, "zoom", "torch")) as client:
        answer = client.post("/v1/predict", content=images[0].read_bytes(), headers={"content-type": "image/png"})
        assert answer.json()["predictions"][0]["confidence"] == pytest.approx(float(expected[0].max()), abs=1e-6)
    imgclf.export(run, "onnx")  # its own parity check runs on the bundle's inputs
    on_onnx = imgclf.load(run, runtime="onnx")
    assert on_onnx.tta and on_onnx.info.tta_zoom == 0.875
    np.testing.assert_allclose(on_onnx.predict_pixels(pixels), imgclf.load(run, precision="fp32").predict_pixels(pixels),
                               atol=1e-4)


@pytest.mark.slow
def test_the_monitoring_reference_of_a_tail_comes_from_its_kept_activations(
        efficientnet_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No training image passes through the bundle for the reference: the kept activations give the same features."""
    caplog.set_level(logging.INFO, logger="imgclf")
    from imgclf.data.decode import decode_file
    from imgclf.watch.reference import features_of, load_reference, unit_rows

    data = make_class_folder(tmp_path / "data", per_class=30)
    result = train(data, tmp_path / "run", efficientnet_weights, epochs=2, val_fraction=0.4)
    assert "monitoring reference: embedding" not in logged(caplog)
    reference = load_reference(result.run_dir)
    assert reference is not None and result.model_dir is not None
    files = sorted(path for path in data.rglob("*.png"))
    pixels = np.stack([decode_file(path, (32, 32), policy="crop").pixels for path in files])
    bundle = unit_rows(features_of(result.model_dir)(pixels))  # every image's features through the bundle
    closest = (unit_rows(reference.train) @ bundle.T).max(axis=1)
    assert len(reference.train) > 20 and closest.min() > 0.99  # each kept row is one image's bundle features
