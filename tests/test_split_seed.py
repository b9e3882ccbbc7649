"""--split-seed picks the split, --seed the weights: runs that differ only by --seed share a split and ensemble."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY_FASTNET, make_class_folder, run_cli

import imgclf
from imgclf.runs import RunDirectory

pytestmark = pytest.mark.slow  # every test here trains (module-scoped runs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny runs on one folder: seed 0, seed 1 (same split seed), and split seed 1."""
    root = tmp_path_factory.mktemp("split-seed")
    data = make_class_folder(root / "data", per_class=12)
    made = {}
    for name, seeds in {"a": {"seed": 0}, "b": {"seed": 1}, "other-split": {"split_seed": 1}}.items():
        made[name] = imgclf.train(data, out=root / name, epochs=1, **TINY_FASTNET, **seeds).run_dir
    return made


def test_runs_that_differ_only_by_seed_share_the_split_and_ensemble(runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = runs["a"], runs["b"]
    assert (a / "split.csv").read_bytes() == (b / "split.csv").read_bytes()
    assert (a / "model" / "weights.safetensors").read_bytes() != (b / "model" / "weights.safetensors").read_bytes()
    result = run_cli("ensemble", str(a), str(b), "--out", str(tmp_path / "E"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load((a / "config.yaml").read_text())["split_seed"] == 0


def test_runs_on_another_split_seed_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("ensemble", str(runs["a"]), str(runs["other-split"]), "--out", str(tmp_path / "E"))
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "validation/test images; train every member on the same split" in result.stdout + result.stderr


def test_a_run_recorded_before_split_seed_existed_reads_its_seed_as_its_split_seed(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "old")
    run.path.mkdir()
    run.config_file.write_text(yaml.safe_dump({"data": "d", "seed": 5}), encoding="utf-8")
    assert run.read_config().split_seed == 5  # it was split with --seed 5
    run.config_file.write_text(yaml.safe_dump({"data": "d", "seed": 5, "split_seed": 0}), encoding="utf-8")
    assert run.read_config().split_seed == 0
