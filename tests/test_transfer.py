"""The photo path: trunk stacks, the probe's views and cross-validated C, embedding cache keys, the planner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, run_cli, save_pretend_weights

from imgclf.embeddings.embedder import Preprocessing, embedding_identity
from imgclf.embeddings.store import EmbeddingStore
from imgclf.engines.linear_probe import REGULARISATION_GRID, fit_linear_head
from imgclf.engines.planner import LITE0, PLANS, TAIL_LITE0, choose_plan
from imgclf.errors import ImgclfError
from imgclf.models import create_model, model_info

STACK = "test_resnet+test_resnet"
PHOTO_STACK = "tf_efficientnet_lite0+tf_efficientnet_lite1"


@pytest.fixture(scope="module")
def stack_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'Pretrained' weights of a two-trunk stack, saved as a stack saves them."""
    return save_pretend_weights(STACK, tmp_path_factory.mktemp("stack") / "stack.safetensors", seed=2)


@pytest.mark.slow
def test_a_stack_trains_predicts_and_exports_as_one_model(stack_weights: Path, tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    trained = run_cli("train", str(data), "--out", str(run), "--model", STACK, "--weights", str(stack_weights),
                      "--image-size", "32", "--workers", "1", "--precision", "fp32")
    assert trained.returncode == 0, trained.stderr
    assert "(probe)" in trained.stderr and "2 view(s) of train" in trained.stderr  # the default: probe + mirror
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["architecture"] == STACK and info["tta"] is True
    predicted = run_cli("predict", str(run), str(data / "red" / "000.png"), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    exported = run_cli("export", str(run), "--format", "onnx")  # the parity check runs inside
    assert exported.returncode == 0, exported.stderr
    assert (run / "model" / "model.onnx").is_file()


def test_stack_names_are_checked() -> None:
    assert model_info(PHOTO_STACK).default_size == 240
    features = create_model(STACK, 3).forward_features(__import__("torch").zeros(2, 3, 32, 32))
    assert features.shape == (2, 2 * create_model("test_resnet", 0).num_features)
    with pytest.raises(ImgclfError, match="'fastnet' is not one"):
        create_model("test_resnet+fastnet", 3)
    with pytest.raises(ImgclfError, match="unknown model 'test_resnett'"):
        create_model("test_resnet+test_resnett", 3)


def test_embedding_caches_are_one_per_backbone_set_and_view(tmp_path: Path) -> None:
    preprocessing = Preprocessing(240, "crop", 3, (0.5,) * 3, (0.5,) * 3)

    def directory(architecture: str, view: str = "plain") -> Path:
        identity = embedding_identity(architecture, {}, "package", preprocessing, "bf16", view)
        return EmbeddingStore(identity, root=tmp_path).directory

    folders = {directory(LITE0), directory(PHOTO_STACK), directory(LITE0, "hflip"), directory(PHOTO_STACK, "hflip"),
               directory(LITE0, "zoom0.875"), directory(LITE0, "zoom0.875-hflip"), directory(LITE0, "zoom0.8")}
    assert len(folders) == 7  # no two of them share vectors: the zoom's share is part of its view's name
    assert directory(PHOTO_STACK, "hflip") == directory(PHOTO_STACK, "hflip")  # equal identities share
    # the plain view adds nothing to the identity: caches written before views existed stay valid
    assert "view" not in embedding_identity(LITE0, {}, "package", preprocessing, "bf16")


def clusters(seed: int, per_class: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 1.5, (3, 12)) + 4
    labels = np.repeat(np.arange(3), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), 12)), labels


def test_the_probe_trains_on_every_view_and_chooses_c_without_the_val_split() -> None:
    train_x, train_y = clusters(1)
    mirrored = train_x + np.random.default_rng(2).normal(0, 0.3, train_x.shape)
    val_x, val_y = clusters(3, per_class=10)
    fit = fit_linear_head([train_x, mirrored], train_y, val_x, val_y, 3)
    assert fit.regularisation in REGULARISATION_GRID and fit.val_accuracy is not None and fit.val_accuracy > 0.8
    wrong = fit_linear_head([train_x, mirrored], train_y, val_x, (val_y + 1) % 3, 3)  # val labels all wrong
    assert wrong.regularisation == fit.regularisation  # val only judges: it never picks C
    assert np.allclose(wrong.weight, fit.weight)


def test_the_planner_buys_the_most_accurate_plan_that_fits() -> None:
    def never(trunk: str, size: int) -> float:
        raise AssertionError("nothing needs timing for a small dataset")

    def available(trunk: str) -> bool:
        return True

    assert choose_plan(100, 20, 300, never, available) == TAIL_LITE0  # the default budget's best: no ensemble
    costs = {LITE0: 0.008, "tf_efficientnet_lite1": 0.010}  # seconds per image, as measured on the quiet 2 cores

    def measured(trunk: str, size: int) -> float:
        return costs[trunk]

    def priced(trunk: str) -> bool:  # the trunks with a pretend cost
        return trunk in costs

    few_thousand = choose_plan(2934, 736, 300, measured, priced)  # flowers: the tail
    assert few_thousand == TAIL_LITE0 and few_thousand.tail_blocks == 1 and few_thousand.views == 2
    no_room_for_the_tail = choose_plan(10_000, 2_500, 400, measured, priced)  # the tail's 10 epochs: 128 s more
    assert no_room_for_the_tail.tail_blocks == 0 and no_room_for_the_tail.views == 2
    many = choose_plan(20_000, 5_000, 300, measured, priced)
    assert many.views == 1 and many.tail_blocks == 0  # the mirror images do not fit five minutes
    assert choose_plan(20_000, 5_000, 3600, measured, priced) == TAIL_LITE0  # an hour, but every ensemble needs lite2
    assert choose_plan(200_000, 50_000, 60, measured, priced) == PLANS[-1]  # nothing fits: the cheapest
    only_lite0 = choose_plan(100, 20, 300, never, lambda trunk: trunk == LITE0)
    assert only_lite0.model == LITE0 and only_lite0.views == 2
    several_processes = choose_plan(100, 20, 300, never, available, tail=False)  # --nproc: the tail runs in one
    assert several_processes.tail_blocks == 0 and several_processes.views == 2
