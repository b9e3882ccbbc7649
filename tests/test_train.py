"""Training through the Python API: run directory, bundle round trip, strategies, resume, early stopping."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_FASTNET, FakeClock, make_class_folder, make_image
from safetensors.torch import load_file
from test_budget import Slowdown

import imgclf
from imgclf.engines.callbacks import Callback, FitState
from imgclf.errors import ImgclfError
from imgclf.training import TrainResult


def test_training_writes_a_complete_run_and_a_bundle_that_predicts_the_same(tiny_training: TrainResult) -> None:
    run = tiny_training  # imgclf.train(colours, epochs=10, **TINY_FASTNET), shared with the tests that read a run
    for name in ("config.yaml", "split.csv", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt",
                 "model/model.json", "model/weights.safetensors"):
        assert (run.run_dir / name).is_file(), name
    assert list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(run.run_dir / "metrics.csv")))
    assert [row["epoch"] for row in rows] == [str(epoch) for epoch in range(1, 11)]
    assert float(rows[-1]["images_per_second"]) > 0 and rows[-1]["val_accuracy"]
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["model"] == "fastnet" and saved["image_size"] == 16 and saved["optimizer"] == "sgd"
    assert run.metrics["test_accuracy"] >= 0.8  # three colours are easy

    classifier = imgclf.load(run.run_dir, precision="fp32")
    test_rows = [row for row in csv.DictReader(open(run.run_dir / "split.csv")) if row["split"] == "test"]
    predicted = classifier.predict([row["path"] for row in test_rows], top_k=1)
    accuracy = np.mean([ranked[0][0] == row["label"] for ranked, row in zip(predicted, test_rows)])
    assert accuracy == pytest.approx(run.metrics["test_accuracy"])
    single = classifier.predict(test_rows[0]["path"])
    assert [name for name, _ in single] and sum(p for _, p in single) == pytest.approx(1.0, abs=1e-5)
    assert single == sorted(single, key=lambda pair: -pair[1])


@pytest.mark.slow
def test_the_same_seed_gives_the_same_weights(colours: Path, tmp_path: Path) -> None:
    first = imgclf.train(colours, out=tmp_path / "a", epochs=1, **TINY_FASTNET)
    second = imgclf.train(colours, out=tmp_path / "b", epochs=1, **TINY_FASTNET)
    assert_same_weights(first.model_dir, second.model_dir)


def assert_same_weights(left: Path, right: Path) -> None:
    a, b = load_file(str(left / "weights.safetensors")), load_file(str(right / "weights.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


class InterruptAt(Callback):
    """As if Ctrl-C arrived right after the given training step (counted from 1)."""

    def __init__(self, step: int) -> None:
        self.step, self.steps = step, 0

    def on_step_end(self, fit: FitState) -> None:
        self.steps += 1
        if self.steps == self.step:
            fit.interrupt()


@pytest.mark.slow
def test_resume_after_an_interruption_mid_epoch_gives_the_same_final_weights(colours: Path, tmp_path: Path) -> None:
    options = dict(epochs=3, mixup=0.2, **TINY_FASTNET)
    uninterrupted = imgclf.train(colours, out=tmp_path / "whole", **options)

    # 3 batches per epoch: Ctrl-C during epoch 2, after its first step
    interrupted = imgclf.train(colours, out=tmp_path / "cut", callbacks=[InterruptAt(step=4)], **options)
    assert interrupted.interrupted and interrupted.model_dir is None
    resumed = imgclf.train(resume=tmp_path / "cut")
    assert not resumed.interrupted
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert_same_weights(uninterrupted.model_dir, resumed.model_dir)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch(colours: Path, tmp_path: Path) -> None:
    run = imgclf.train(colours, out=tmp_path / "run", epochs=6, early_stopping=1, monitor="val_loss",
                       ema=False, lookahead=False, augment="light", **{**TINY_FASTNET, "lr": 1e-12})
    assert len(run.history) == 2 and run.metrics["best_epoch"] == 1


PRETRAINED = dict(model="test_resnet", pretrained=True, precision="fp32", batch_size=16, image_size=32, workers=1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["probe", "finetune", "two-stage"])
def test_every_transfer_strategy(strategy: str, colours: Path, backbone_weights: Path, tmp_path: Path) -> None:
    run = imgclf.train(colours, out=tmp_path / strategy, weights=str(backbone_weights), strategy=strategy, epochs=2,
                       **PRETRAINED)
    stages = [row["stage"] for row in run.history]
    # the probe stage is one logistic-regression fit on cached embeddings, whatever its epochs
    assert stages == {"probe": ["probe"], "finetune": ["finetune"] * 2, "two-stage": ["probe", "finetune"]}[strategy]
    trained = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    original = load_file(str(backbone_weights))
    backbone = [name for name in trained if not name.startswith("fc.")]
    unchanged = all(torch.equal(trained[name], original[name]) for name in backbone)
    # a probe freezes the backbone, BatchNorm statistics included; fine-tuning moves it
    assert unchanged == (strategy == "probe")
    assert trained["fc.weight"].shape[0] == 3


def test_yaml_config_and_explicit_options(colours: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": "fastnet", "epochs": 7, "lr": 0.5, "model_args": TINY_FASTNET["model_args"]}))
    resolved = imgclf.train(colours, config=config, lr=0.25, dry_run=True)
    assert (resolved.model, resolved.epochs, resolved.lr) == ("fastnet", 7, 0.25)
    config.write_text("epoch: 3\n")
    with pytest.raises(ImgclfError, match="unknown key.*epoch"):
        imgclf.train(colours, config=config, dry_run=True)


def test_defaults_are_chosen_from_the_data(colours: Path, tmp_path: Path) -> None:
    small = imgclf.train(colours, dry_run=True)
    assert (small.model, small.strategy, small.image_size, small.tta) == ("fastnet", "scratch", 16, True)
    photos = tmp_path / "photos"
    for name, colour in {"a": (200, 10, 10), "b": (10, 200, 10)}.items():
        for number in range(8):
            make_image(photos / name / f"{number}.jpg", colour, size=200, seed=number)
    pretrained = imgclf.train(photos, dry_run=True)  # the planner's best plan: 16 photos fit any budget
    assert (pretrained.model, pretrained.strategy, pretrained.tail_blocks, pretrained.image_size, pretrained.tta) == (
        "tf_efficientnet_lite0", "tail", 1, 224, True)
    assert pretrained.epochs == 11  # the probe, then ten tail epochs
    one_trunk = imgclf.train(photos, model="tf_efficientnet_lite0", dry_run=True)
    assert (one_trunk.strategy, one_trunk.image_size, one_trunk.tta) == ("probe", 224, True)
    asked = imgclf.train(photos, model="tf_efficientnet_lite0", strategy="two-stage", dry_run=True)
    assert asked.probe_epochs and asked.probe_epochs < asked.epochs and not asked.tta
    scratch = imgclf.train(photos, pretrained=False, dry_run=True)
    assert (scratch.model, scratch.strategy, scratch.image_size) == ("fastnet", "scratch", 96)


@pytest.mark.slow
def test_time_budget_fits_the_schedule(colours: Path, tmp_path: Path, clock: FakeClock) -> None:
    """On the fake clock, as a machine taking 0.2 s a step: the same schedule and seconds on any machine."""
    run = imgclf.train(colours, out=tmp_path / "run", time_budget="8s", callbacks=[Slowdown(clock, 0.2, 0.2)],
                       **TINY_FASTNET)
    assert run.config.epochs != imgclf.train(colours, dry_run=True, **TINY_FASTNET).epochs
    assert sum(row["seconds"] for row in run.history) < 8 * 1.5


@pytest.mark.slow
def test_imbalance_is_reported_and_handled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_class_folder(tmp_path / "data", per_class=25)
    for path in sorted((root / "blue").iterdir())[4:]:
        path.unlink()
    run = imgclf.train(root, out=tmp_path / "run", epochs=1, class_weights="auto", balanced_sampling=True, **TINY_FASTNET)
    assert any(record.levelname == "WARNING" and "class imbalance: 'blue'" in record.getMessage()
               for record in caplog.records)
    assert run.model_dir is not None


@pytest.mark.slow
def test_multilabel_manifest_trains(tmp_path: Path) -> None:
    rows = ["path,labels"]
    for number in range(30):
        colour = [(220, 30, 30), (30, 200, 40), (220, 200, 40)][number % 3]
        labels = ["red", "green", "red|green"][number % 3]
        rows.append(f"{make_image(tmp_path / 'img' / f'{number}.png', colour, seed=number)},{labels}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = imgclf.train(tmp_path / "labels.csv", out=tmp_path / "run", epochs=2, **TINY_FASTNET)
    probabilities = imgclf.load(run.run_dir).predict_proba([tmp_path / "img" / "2.png"])
    assert probabilities.shape == (1, 2) and not np.isclose(probabilities.sum(), 1.0)  # independent sigmoids


@pytest.mark.parametrize("options, message", [
    (dict(model="resnet1"), "unknown model 'resnet1'; closest: resnet18"),
    (dict(image_size=4), "--image-size must be between 8 and 1024"),
    (dict(batch_size=0), "--batch-size must be between 1"),
    (dict(epochs=3, time_budget="1m"), "not both"),
    (dict(strategy="probe", model="fastnet"), "--strategy probe needs pretrained weights"),
    (dict(time_budget="soon"), "not a duration"),
    (dict(quality="medium"), "--quality 'medium' is not one of fast, default, high, best"),
    (dict(quality="high", time_budget="5m"), "give --quality or --time-budget, not both: --quality high means "
                                             "--time-budget 20m"),
    (dict(quality="fast", epochs=2), "give --epochs or --quality, not both"),
    (dict(optimizer="adam"), "--optimizer 'adam' is not one of adamw, sgd"),
    (dict(augment="heavy"), "--augment 'heavy' is not one of none, light, standard, strong"),
    (dict(epochs="ten"), "option epochs: expected float, got 'ten'"),
    (dict(ema_decay=1.0), "--ema-decay must be in [0, 1)"),
    (dict(model="fastnet", low_res=16), "--low-res 16 is not below the image size 16"),
    (dict(low_res=4), "--low-res is the side of the early epochs' images, from 8 pixels"),
    (dict(low_res_epochs=2), "--low-res-epochs needs --low-res"),
])
def test_bad_options_are_refused_with_the_option_named(options: dict, message: str, colours: Path,
                                                       tmp_path: Path) -> None:
    with pytest.raises(ImgclfError, match=re.escape(message)):
        imgclf.train(colours, out=tmp_path / "run", **{**dict(workers=1), **options})


@pytest.mark.slow
def test_an_existing_run_is_not_overwritten_by_accident(colours: Path, tmp_path: Path) -> None:
    imgclf.train(colours, out=tmp_path / "run", epochs=1, **TINY_FASTNET)
    with pytest.raises(ImgclfError, match="already exists; pass --overwrite"):
        imgclf.train(colours, out=tmp_path / "run", epochs=1, **TINY_FASTNET)
    again = imgclf.train(colours, out=tmp_path / "run", epochs=1, overwrite=True, **TINY_FASTNET)
    assert again.model_dir.is_dir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    (tmp_path / "mine" / "config.yaml").write_text("a config of something else\n")
    with pytest.raises(ImgclfError, match="not an imgclf run"):
        imgclf.train(colours, out=tmp_path / "mine", epochs=1, overwrite=True, **TINY_FASTNET)
    assert (tmp_path / "mine" / "thesis.txt").exists()


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_the_saved_run_over(colours: Path, tmp_path: Path) -> None:
    first = imgclf.train(colours, out=tmp_path / "run", epochs=2, **TINY_FASTNET)
    (first.run_dir / "checkpoints" / "last.pt").unlink()  # as if stopped while decoding
    (first.run_dir / "model" / "weights.safetensors").unlink()
    again = imgclf.train(resume=first.run_dir)
    assert len(again.history) == 2 and (again.model_dir / "weights.safetensors").is_file()


@pytest.mark.slow
def test_gradient_probe_and_the_embedding_cache(colours: Path, backbone_weights: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sgd = imgclf.train(colours, out=tmp_path / "sgd", weights=str(backbone_weights), strategy="probe", epochs=2,
                       linear_probe=False, **PRETRAINED)
    assert [row["stage"] for row in sgd.history] == ["probe", "probe"]
    original = load_file(str(backbone_weights))
    trained = torch.load(sgd.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[name], original[name]) for name in trained if not name.startswith("fc."))

    from imgclf.embeddings.embedder import Embedder

    embedded = []
    real_embed = Embedder.embed_pixels
    monkeypatch.setattr(Embedder, "embed_pixels",
                        lambda self, pixels: embedded.append(len(pixels)) or real_embed(self, pixels))
    first = imgclf.train(colours, out=tmp_path / "a", weights=str(backbone_weights), strategy="probe", **PRETRAINED)
    splits = [row.split(",")[-1] for row in (tmp_path / "a" / "split.csv").read_text().splitlines()[1:]]
    fitted_on = sum(split in ("train", "val") for split in splits) + sum(split == "train" for split in splits)
    # train and val embedded once for the fit, and train's mirror images (flip TTA: the probe's second view);
    # the final scores come from the bundle, as evaluate's do
    assert first.config.tta and sum(embedded) == fitted_on
    second = imgclf.train(colours, out=tmp_path / "b", weights=str(backbone_weights), strategy="probe", **PRETRAINED)
    assert sum(embedded) == fitted_on  # ... and reused by the second run
    assert_same_weights(first.model_dir, second.model_dir)
    plain = imgclf.train(colours, out=tmp_path / "c", weights=str(backbone_weights), strategy="probe", tta=False,
                         **PRETRAINED)
    assert sum(embedded) == fitted_on  # the plain view's entries serve a run without mirror images
    assert not plain.config.tta
    assert first.metrics["val_accuracy"] >= 0.8


@pytest.mark.slow
def test_ctrl_c_on_the_last_step_of_an_epoch_resumes_exactly(colours: Path, tmp_path: Path) -> None:
    options = dict(epochs=3, **TINY_FASTNET)
    uninterrupted = imgclf.train(colours, out=tmp_path / "whole", **options)
    # 3 batches per epoch: the sixth step is the last of epoch 2
    assert imgclf.train(colours, out=tmp_path / "cut", callbacks=[InterruptAt(step=6)], **options).interrupted
    resumed = imgclf.train(resume=tmp_path / "cut")
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert_same_weights(uninterrupted.model_dir, resumed.model_dir)


@pytest.mark.slow
def test_without_a_validation_split_the_last_epoch_is_shipped(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for number in range(24):
        name, colour = [("red", (220, 30, 30)), ("blue", (30, 40, 220))][number % 2]
        rows.append(f"{make_image(tmp_path / 'img' / f'{number}.png', colour, seed=number)},{name},train")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    run = imgclf.train(tmp_path / "train.csv", out=tmp_path / "run", epochs=3, val_fraction=0.0, **TINY_FASTNET)
    assert "val_accuracy" not in run.metrics and run.metrics["best_epoch"] == 3


def test_another_optimizer_gets_its_own_rates(colours: Path) -> None:
    adamw = imgclf.train(colours, model="fastnet", optimizer="adamw", dry_run=True)
    assert (adamw.lr, adamw.bias_lr_scale) == (1e-3, 1.0)
    assert imgclf.train(colours, model="fastnet", dry_run=True).bias_lr_scale == 64.0


@pytest.mark.slow
def test_resume_is_exact_with_muon_lookahead_low_res_and_the_whitening_bias_freeze(colours: Path, tmp_path: Path) -> None:
    options = dict(TINY_FASTNET, epochs=2, optimizer="muon", muon_lr=0.05, lookahead=True, ema=False,
                   whitening_bias_epochs=1, augment="airbench", low_res=12, low_res_epochs=1)
    uninterrupted = imgclf.train(colours, out=tmp_path / "whole", **options)
    # 3 batches per epoch: Ctrl-C mid-epoch 2, when Muon, lookahead and momentum state all exist
    assert imgclf.train(colours, out=tmp_path / "cut", callbacks=[InterruptAt(step=4)], **options).interrupted
    resumed = imgclf.train(resume=tmp_path / "cut")
    assert_same_weights(uninterrupted.model_dir, resumed.model_dir)


@pytest.mark.slow
def test_the_whitening_bias_stops_training_after_its_epochs(colours: Path, tmp_path: Path) -> None:
    # no lookahead: its pulls towards the slow copy move every weight, the frozen bias too (as in airbench)
    options = dict(TINY_FASTNET, epochs=2, ema=False, lookahead=False, whitening_bias_epochs=1)
    # Ctrl-C at the end of epoch 1 leaves the weights of that moment in the checkpoint
    assert imgclf.train(colours, out=tmp_path / "run", callbacks=[InterruptAt(step=3)], **options).interrupted
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    after_one = torch.load(last, weights_only=True)["model"]
    assert not imgclf.train(resume=tmp_path / "run").interrupted
    final = torch.load(last, weights_only=True)["model"]  # the weights after the last step (not the best epoch's)
    torch.testing.assert_close(final["whiten.bias"], after_one["whiten.bias"], rtol=0, atol=0)
    assert not torch.equal(final["groups.0.norms.0.bias"], after_one["groups.0.norms.0.bias"])  # the rest trained on


@pytest.mark.slow
def test_a_checkpoint_whose_optimiser_groups_differ_is_refused_in_one_line(colours: Path, tmp_path: Path) -> None:
    """A run started by a version that grouped the parameters otherwise cannot resume here: said, not a traceback."""
    from imgclf.engines.checkpoint import load_checkpoint, save_checkpoint
    from imgclf.errors import ImgclfError

    cut = tmp_path / "cut"
    assert imgclf.train(colours, out=cut, callbacks=[InterruptAt(step=4)], epochs=3, **TINY_FASTNET).interrupted
    last = cut / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]  # an older grouping: fewer groups
    save_checkpoint(state, last)
    with pytest.raises(ImgclfError, match="optimiser state does not fit this version's parameter groups"):
        imgclf.train(resume=cut)


@pytest.mark.slow
def test_low_res_trains_the_first_epochs_on_downscaled_batches(colours: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf.models.small import FastNet

    sides: list[int] = []
    forward = FastNet.forward

    def recording(self: FastNet, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            sides.append(images.shape[-1])
        return forward(self, images)

    monkeypatch.setattr(FastNet, "forward", recording)
    imgclf.train(colours, out=tmp_path / "run", epochs=2, low_res=12, low_res_epochs=1, **TINY_FASTNET)
    assert sides == [12] * 3 + [16] * 3  # 3 steps an epoch at 16 px; the first epoch at 12
    assert imgclf.train(colours, epochs=4, low_res=12, dry_run=True, **TINY_FASTNET).low_res_epochs == 2  # half by default
