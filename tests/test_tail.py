"""--strategy tail: the probe, then the trunk's last blocks trained on kept activations, shipped as one bundle."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, run_cli, save_pretend_weights

from imgclf.training import TrainResult

MODEL = "test_efficientnet"  # timm's tiny EfficientNet: five blocks, the layout the tail is cut from
TAIL = dict(model=MODEL, strategy="tail", image_size=32, workers=1, precision="fp32", batch_size=8, epochs=4,
            monitor="val_loss")


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


def test_a_tail_too_large_for_memory_falls_back_to_the_probe(efficientnet_weights: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from imgclf.engines import tail

    monkeypatch.setattr(tail, "memory_limit_bytes", lambda: 1000)
    data = make_class_folder(tmp_path / "data", per_class=4)
    result = train(data, tmp_path / "run", efficientnet_weights)
    assert [row["stage"] for row in result.history] == ["probe"]
    assert result.model_dir is not None and (result.model_dir / "weights.safetensors").is_file()
    assert "tail skipped" in capsys.readouterr().err


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
        (["--model", "test_resnet", "--weights", str(backbone_weights)], "no EfficientNet block layout"),
    ]
    for extra, expected in cases:
        failed = run_cli("train", *common, *extra)
        assert failed.returncode == 2, (extra, failed.stderr)
        assert expected in failed.stderr and "Traceback" not in failed.stderr, (extra, failed.stderr)
    for options, expected in (({"epochs": 1}, "leaves the tail no epochs"), ({"tail_blocks": 9}, "has 5 blocks")):
        with pytest.raises(ImgclfError, match=expected):
            train(data, tmp_path / "python", efficientnet_weights, **options)


def test_a_rerun_reads_the_activations_from_disk_and_trains_the_same_model(
        efficientnet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The frozen part's output is cached per image and view like embeddings: keyed by file and by the cut."""
    from conftest import make_image
    from safetensors.torch import load_file

    data = make_class_folder(tmp_path / "data", per_class=6)
    first = train(data, tmp_path / "first", efficientnet_weights, epochs=2)
    assert "read from the cache" not in capsys.readouterr().err
    again = train(data, tmp_path / "again", efficientnet_weights, epochs=2)
    said = capsys.readouterr().err
    assert "activations of 30 image views read from the cache" in said and "computed" not in said  # 12 x 2 + 6
    assert first.model_dir is not None and again.model_dir is not None
    weights = [load_file(str(result.model_dir / "weights.safetensors")) for result in (first, again)]
    assert all((weights[0][name] == weights[1][name]).all() for name in weights[0])
    assert first.history[-1]["val_loss"] == again.history[-1]["val_loss"]

    edited = sorted((data / "red").iterdir())[0]
    make_image(edited, (250, 250, 250), seed=99)  # new contents: this image's rows are computed again
    train(data, tmp_path / "edited", efficientnet_weights, epochs=2)
    said = capsys.readouterr().err
    assert "read from the cache" in said and ("29 image views" in said or "28 image views" in said), said
    train(data, tmp_path / "two-blocks", efficientnet_weights, epochs=2, tail_blocks=2)  # another cut: another key
    assert "read from the cache" not in capsys.readouterr().err
