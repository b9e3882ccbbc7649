"""L1 alongside weight decay, and timm's dropout / stochastic depth by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_FASTNET, make_class_folder, run_cli
from safetensors.numpy import load_file

import imgclf
from imgclf.config import make_config
from imgclf.engines.torch_engine import regularisation_args
from imgclf.models import create_model


def weight_l1(run: Path) -> float:
    """Sum of |w| over the bundle's trainable matrices and kernels (the frozen whitening conv excluded)."""
    weights = load_file(str(run / "model" / "weights.safetensors"))
    return float(sum(abs(value).sum() for name, value in weights.items()
                     if value.ndim > 1 and "whiten" not in name))


@pytest.mark.slow
def test_l1_shrinks_the_weights(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    options = dict(TINY_FASTNET, epochs=3, ema=False)
    plain = imgclf.train(data, out=tmp_path / "plain", **options)
    sparse = imgclf.train(data, out=tmp_path / "l1", l1=0.05, **options)
    assert sparse.config.l1 == 0.05 and plain.config.l1 == 0.0
    assert weight_l1(sparse.run_dir) < 0.9 * weight_l1(plain.run_dir)


def test_dropout_and_drop_path_reach_timm_by_their_names() -> None:
    config = make_config(data="x", model="test_resnet", dropout=0.3, drop_path=0.1)
    args = regularisation_args(config)
    assert args == {"drop_rate": 0.3, "drop_path_rate": 0.1}
    model = create_model("test_resnet", 3, **args)
    assert model.drop_rate == 0.3
    assert [module.drop_prob for module in model.modules() if type(module).__name__ == "DropPath"][-1] == pytest.approx(0.1)
    assert regularisation_args(make_config(data="x", model="tutorial-cnn", dropout=0.2)) == {"dropout": 0.2}


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "message"), [
    (["--model", "fastnet", "--drop-path", "0.1"], "--drop-path: fastnet has no stochastic depth"),
    (["--dropout", "1.5"], "--dropout is a probability in [0, 1), got 1.5"),
    (["--l1", "-1"], "--l1 must be at least 0"),
])
def test_bad_regularisation_options_get_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    data = make_class_folder(tmp_path / "data", per_class=4)
    result = run_cli("train", str(data), "--dry-run", *flags)
    if "--drop-path" in flags:  # checked where the model is built, after the dry run's plan
        result = run_cli("train", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
