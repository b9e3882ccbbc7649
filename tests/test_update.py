"""``imgclf update``: a new class learnt while the old ones keep their answers, the regression gate, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FASTNET, make_class_folder, make_image, run_cli

COLOURS = {"blue": (30, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}
YELLOW = {"yellow": (230, 220, 40)}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fastnet on three colours, 40 images each, with 12 held-out test images a class (enough to judge)."""
    import imgclf

    root = tmp_path_factory.mktemp("update")
    data = make_class_folder(root / "data", per_class=40, colours=COLOURS)
    return imgclf.train(data, out=root / "run", epochs=8, test_fraction=0.3, **TINY_FASTNET).run_dir


def _predictions(model: Path, files: list[Path]) -> list[str]:
    import imgclf

    classifier = imgclf.load(model)
    return [row.top[0][0] for row in classifier.predict_files(files)]


@pytest.mark.slow
def test_update_adds_a_class_and_old_classes_keep_their_answers(base_run: Path, tmp_path: Path) -> None:
    new = make_class_folder(tmp_path / "new", per_class=40, colours=YELLOW, seed=3)
    out = tmp_path / "run2"
    done = run_cli("update", str(base_run), "--add", str(new), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "gate passed" in done.stderr
    clear = [make_image(tmp_path / "clear" / f"{name}.png", colour, seed=7)
             for name, colour in {**COLOURS, **YELLOW}.items()]
    assert _predictions(out, clear) == ["blue", "green", "red", "yellow"]
    assert _predictions(base_run, clear[:3]) == ["blue", "green", "red"]
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] and not gate["forced"] and "yellow" in gate["new_classes"]
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    from imgclf.deploy.metadata import bundle_content_id
    from imgclf.lifecycle.lineage import read_lineage

    assert read_lineage(out / "model") == lineage
    assert lineage["id"] == bundle_content_id(out / "model")
    assert lineage["parent"]["id"] == bundle_content_id(base_run / "model")
    assert lineage["added"]["images"] == 40 and lineage["added"]["classes"] == {"yellow": 40}
    assert lineage["gate"] == {"passed": True, "forced": False, "max_drop": 2.0, "classes": []}
    assert read_lineage(base_run / "model") is None
    old_split = (base_run / "split.csv").read_text().splitlines()[1:]
    new_split = set((out / "split.csv").read_text().splitlines()[1:])
    assert all(line in new_split for line in old_split)  # RUN's images keep their labels and splits
    assert "Update gate" in (out / "report.html").read_text()


@pytest.mark.slow
def test_gate_refuses_a_planted_regression_and_force_records_it(base_run: Path, tmp_path: Path) -> None:
    # red photos labelled blue: they contradict what the model knows of red
    planted = make_class_folder(tmp_path / "planted", per_class=120, colours={"blue": COLOURS["red"]}, seed=5)
    out = tmp_path / "run2"
    refused = run_cli("update", str(base_run), "--add", str(planted), "--out", str(out))
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]  # the training's progress comes first
    assert "Traceback" not in refused.stderr
    assert "update refused" in message and "red" in message and "--force" in message
    assert not out.exists()
    forced = run_cli("update", str(base_run), "--add", str(planted), "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    gate = json.loads((out / "gate.json").read_text())
    assert gate["forced"] and not gate["passed"] and "red" in gate["failed"]
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    assert lineage["gate"]["forced"] and "red" in lineage["gate"]["classes"]


def test_gate_judges_only_classes_with_enough_images() -> None:
    from imgclf.lifecycle.gate import ClassScore, judge

    before = {"big": ClassScore(20, 1.0, 20), "small": ClassScore(5, 1.0, 5), "one": ClassScore(60, 1.0, 60)}
    after = {"big": ClassScore(20, 0.8, 16), "small": ClassScore(5, 0.0, 0), "one": ClassScore(60, 59 / 60, 59)}
    gate = judge(before, after, multilabel=False, split="test", max_drop=1.0)
    assert [change.name for change in gate.failed] == ["big"]  # small: too few images; one: a single image lost
    assert not gate.passed
    assert judge(before, after, multilabel=False, split="test", max_drop=25.0).passed


def test_update_refuses_a_class_name_that_differs_only_by_case(tiny_run: Path, tmp_path: Path) -> None:
    typo = make_class_folder(tmp_path / "new", per_class=3, colours={"Red ": (200, 40, 40)})
    done = run_cli("update", str(tiny_run), "--add", str(typo), "--out", str(tmp_path / "run2"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'Red '" in done.stderr and "rename it to 'red'" in done.stderr
    assert not (tmp_path / "run2").exists()


def test_update_refuses_an_ensemble_and_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from conftest import untrained_bundle

    from imgclf.deploy.bundle import ENSEMBLE, update_bundle_info

    new = make_class_folder(tmp_path / "new", per_class=2, colours=YELLOW)
    untrained_bundle(tmp_path / "ensemble")
    update_bundle_info(tmp_path / "ensemble" / "model", kind=ENSEMBLE)
    done = run_cli("update", str(tmp_path / "ensemble"), "--add", str(new), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "is an ensemble; update each member run" in done.stderr
    (tmp_path / "empty").mkdir()
    for folder, expected in ((tmp_path / "empty", "is not an imgclf run"), (tmp_path / "missing", "no such run")):
        done = run_cli("update", str(folder), "--add", str(new), "--out", str(tmp_path / "out"))
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_update_of_a_run_without_its_model_says_to_finish_it(tiny_run: Path, tmp_path: Path) -> None:
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path / "copy")
    import shutil

    shutil.rmtree(run / "model")
    done = run_cli("update", str(run), "--add", str(make_class_folder(tmp_path / "new", per_class=2, colours=YELLOW)),
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "imgclf train --resume" in done.stderr


def test_every_run_records_its_data_with_content_hashes(tiny_run: Path) -> None:
    from imgclf.lifecycle.manifest import run_manifest
    from imgclf.runs import RunDirectory

    rows = run_manifest(RunDirectory(tiny_run))
    assert len(rows) == 60 and all(len(row.digest) == 32 for row in rows.values())
    assert {row.split for row in rows.values()} >= {"train", "val"}
    assert np.unique([row.digest for row in rows.values()]).size == 60


@pytest.mark.slow
def test_updating_a_probe_embeds_only_the_new_images(tmp_path: Path, backbone_weights: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclf
    from imgclf.embeddings.embedder import Embedder

    data = make_class_folder(tmp_path / "data", per_class=12, colours=COLOURS)
    run = imgclf.train(data, out=tmp_path / "run", model="test_resnet", pretrained=True, weights=str(backbone_weights),
                       strategy="probe", tta=False, image_size=32, workers=1).run_dir
    embedded: list[int] = []
    real_embed = Embedder.embed_pixels
    monkeypatch.setattr(Embedder, "embed_pixels",
                        lambda self, pixels: embedded.append(len(pixels)) or real_embed(self, pixels))
    new = make_class_folder(tmp_path / "new", per_class=12, colours=YELLOW, seed=2)
    result = imgclf.update(run, new, tmp_path / "run2")
    assert 0 < sum(embedded) <= 12  # the old images' embeddings were kept from the first training
    assert result.train.config.strategy == "probe" and "yellow" in imgclf.load(result.model_dir).classes
    assert all(not change.judged for change in result.gate.classes) and result.gate.passed


def test_gate_scores_a_multilabel_model_by_average_precision() -> None:
    from imgclf.lifecycle.gate import class_scores, judge

    labels = [("cat",), ("cat", "dog"), ("dog",), ("dog",)] * 5
    good = np.array([[0.9, 0.1], [0.8, 0.9], [0.1, 0.9], [0.2, 0.8]] * 5)
    bad = np.array([[0.1, 0.9], [0.2, 0.1], [0.9, 0.9], [0.8, 0.8]] * 5)
    before = class_scores(labels, good, None, ["cat", "dog"], multilabel=True)
    after = class_scores(labels, bad, None, ["cat", "dog"], multilabel=True)
    assert before["cat"].score == 1.0 and before["cat"].support == 10
    gate = judge(before, after, multilabel=True, split="val")
    assert gate.metric == "average precision" and "cat" in [change.name for change in gate.failed]


@pytest.mark.slow
def test_update_keeps_path_labels_working(tmp_path: Path) -> None:
    import imgclf

    colours = {"warm/red": (200, 40, 40), "cool/blue": (30, 60, 200), "cool/green": (40, 180, 60)}
    data = make_class_folder(tmp_path / "data", per_class=20, colours=colours)
    run = imgclf.train(data, out=tmp_path / "run", epochs=6, **TINY_FASTNET).run_dir
    new = make_class_folder(tmp_path / "new", per_class=20, colours={"warm/yellow": YELLOW["yellow"]}, seed=4)
    result = imgclf.update(run, new, tmp_path / "run2")
    classifier = imgclf.load(result.model_dir)
    assert classifier.classes == ["cool/blue", "cool/green", "warm/red", "warm/yellow"]
    row = next(classifier.predict_files([make_image(tmp_path / "y.png", YELLOW["yellow"], seed=9)]))
    assert row.top[0][0] == "warm/yellow" and row.levels[0].label == "warm"


def test_a_correction_relabels_an_old_image_in_place(tmp_path: Path) -> None:
    from imgclf.data.sources import ImageDataset, Item
    from imgclf.lifecycle.update import changed_items, combine

    old = [Item(tmp_path / "a.png", ("red",), "train"), Item(tmp_path / "b.png", ("blue",), "test")]
    previous = ImageDataset(old, ["blue", "red"])
    added = ImageDataset([Item(tmp_path / "b.png", ("red",), "train"), Item(tmp_path / "a.png", ("red",), "val"),
                          Item(tmp_path / "c.png", ("yellow",), "train")], ["red", "yellow"])
    combined = combine(previous, added)
    assert [(item.path.name, item.labels, item.split) for item in combined.items] == [
        ("a.png", ("red",), "train"), ("b.png", ("red",), "test"), ("c.png", ("yellow",), "train")]
    assert combined.classes == ["red", "yellow"]
    assert [item.path.name for item in changed_items(previous, added).items] == ["b.png", "c.png"]


@pytest.mark.slow
def test_update_applies_corrections_to_the_old_and_new_images(base_run: Path, tmp_path: Path) -> None:
    new = make_class_folder(tmp_path / "new", per_class=20, colours=YELLOW, seed=5)
    excluded = sorted((new / "yellow").iterdir())[0]
    corrections = tmp_path / "corrections.csv"
    corrections.write_text(f"path,action,label,reason,time\nyellow/{excluded.name},exclude,,blurry,"
                           "2026-12-06T05:00:00Z\n")
    out = tmp_path / "run2"
    done = run_cli("update", str(base_run), "--add", str(new), "--out", str(out), "--corrections", str(corrections),
                   "--force")
    assert done.returncode == 0, done.stderr
    trained = (out / "split.csv").read_text()
    assert excluded.name not in [line.split(",")[0].rsplit("/", 1)[-1] for line in trained.splitlines()
                                 if "yellow" in line]
    assert trained.count(",yellow,") == 19


@pytest.mark.slow
def test_updating_a_tail_goes_on_from_its_weights_on_kept_activations(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The probe is refitted on the run's own tail (with the run's C), then the tail trains a few epochs from it."""
    import logging

    from conftest import save_pretend_weights
    from safetensors.torch import load_file

    import imgclf
    from imgclf.lifecycle.update import UPDATE_TAIL_EPOCHS

    caplog.set_level(logging.INFO, logger="imgclf")
    weights = save_pretend_weights("test_efficientnet", tmp_path / "weights.safetensors")
    data = make_class_folder(tmp_path / "data", per_class=12, colours=COLOURS)
    run = imgclf.train(data, out=tmp_path / "run", model="test_efficientnet", weights=str(weights), strategy="tail",
                       image_size=32, workers=1, precision="fp32", batch_size=8, epochs=6, tta=False).run_dir
    chosen_c = imgclf.load(run).info.config["probe_c"]
    assert chosen_c is not None and (run / "held_out_logits.json").is_file()  # what the update reuses
    caplog.clear()
    new = make_class_folder(tmp_path / "new", per_class=12, colours=YELLOW, seed=2)
    result = imgclf.update(run, new, tmp_path / "run2")
    said = caplog.text
    kept = {split: [row for row in (result.run_dir / "split.csv").read_text().splitlines()[1:]
                    if row.endswith(f",{split}")] for split in ("train", "val")}
    added = sum("/new/" in row for rows in kept.values() for row in rows)
    old = sum(len(rows) for rows in kept.values()) - added
    assert f"activations of {old} image views read from the cache, {added} computed" in said, said
    assert f"{1 + UPDATE_TAIL_EPOCHS} epochs from the run's weights" in said
    assert f"C={chosen_c:g} by --probe-c" in said  # the run's regularisation, no cross-validation again
    stages = [line.split(",")[1] for line in (result.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert stages == ["probe"] + ["tail"] * UPDATE_TAIL_EPOCHS
    before, after = (load_file(str(folder / "model" / "weights.safetensors")) for folder in (run, result.run_dir))
    tail = ("blocks.4.", "conv_head.", "bn2.weight", "bn2.bias", "classifier.")
    frozen = [name for name in before if not name.startswith(tail) or "running_" in name]
    assert frozen and all((after[name] == before[name]).all() for name in frozen)
    assert result.gate.passed and result.gate.new_classes["yellow"].score > 0.5
    assert _predictions(result.model_dir, sorted((new / "yellow").iterdir())[:4]) == ["yellow"] * 4


@pytest.mark.slow
def test_updating_a_tail_whose_activations_no_longer_fit_says_to_retrain(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import save_pretend_weights

    import imgclf
    from imgclf.engines import tail
    from imgclf.errors import ImgclfError

    weights = save_pretend_weights("test_efficientnet", tmp_path / "weights.safetensors")
    data = make_class_folder(tmp_path / "data", per_class=6, colours=COLOURS)
    run = imgclf.train(data, out=tmp_path / "run", model="test_efficientnet", weights=str(weights), strategy="tail",
                       image_size=32, workers=1, precision="fp32", batch_size=8, epochs=2, tta=False).run_dir
    monkeypatch.setattr(tail, "memory_limit_bytes", lambda: 1000)
    with pytest.raises(ImgclfError, match="needs the old and new images' activations in memory"):
        imgclf.update(run, make_class_folder(tmp_path / "new", per_class=6, colours=YELLOW, seed=2), tmp_path / "run2")
    assert not (tmp_path / "run2" / "model").exists()


@pytest.mark.slow
def test_class_weights_given_to_update_replace_the_runs(base_run: Path, tmp_path: Path) -> None:
    import yaml

    new = make_class_folder(tmp_path / "new", per_class=8, colours=YELLOW, seed=2)
    done = run_cli("update", str(base_run), "--add", str(new), "--out", str(tmp_path / "run2"), "--class-weights",
                   "auto", "--force")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((base_run / "config.yaml").read_text())["class_weights"] == "none"
    assert yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())["class_weights"] == "auto"
    bad = run_cli("update", str(base_run), "--add", str(new), "--out", str(tmp_path / "run3"), "--class-weights",
                  "balanced")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--class-weights balanced: choose one of none, auto" in bad.stderr
    assert not (tmp_path / "run3").exists()
