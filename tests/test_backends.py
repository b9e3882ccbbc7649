"""The backend record is the one place a backend's abilities are declared: a third backend registered there is seen
by every refusal and capability check (training options, recipes, tuning, runtimes, export, quantisation,
explanations, embeddings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_image, untrained_bundle

from imgclf import backends
from imgclf.backends import BackendRecord, Refusal
from imgclf.config import make_config
from imgclf.deploy.bundle import update_bundle_info
from imgclf.deploy.classifier import Classifier
from imgclf.deploy.export import export
from imgclf.deploy.runtime import native_of
from imgclf.embeddings.embedder import Embedder
from imgclf.engines.registry import get_backend
from imgclf.errors import ImgclfError
from imgclf.recipes import DataFacts, probes_only, uses_photo_plan
from imgclf.workflows.tune_space import default_space, ignored_options, linear_probe_only

PRETEND = BackendRecord(
    "pretend", "imgclf.engines.torch_engine:TorchEngine", runtime="torch", export_formats=("onnx",), quantisers=(),
    explainer="torch", refuses=(Refusal("--mixup", lambda config: config.mixup > 0, "mixup"),
                                Refusal("--optimizer {config.optimizer}", lambda config: config.optimizer == "muon")))


@pytest.fixture
def pretend() -> Iterator[BackendRecord]:
    backends.register(PRETEND)
    yield PRETEND
    del backends.RECORDS["pretend"]


def test_a_registered_backend_s_refusals_are_checked_by_name(pretend: BackendRecord) -> None:
    backend = get_backend("pretend")
    backend.check(make_config(backend="torch", mixup=0.0))
    with pytest.raises(ImgclfError, match=r"--backend pretend does not support --time-budget, --mixup, "
                                          r"--optimizer muon; drop it"):
        backend.check(make_config(mixup=0.2, optimizer="muon", time_budget="1m"))
    with pytest.raises(ImgclfError, match="cannot train in 2 processes"):
        backend.check_processes(2)
    with pytest.raises(ImgclfError, match="--backend nothing is not known; choose one of torch, tensorflow, pretend"):
        get_backend("nothing")


def test_a_registered_backend_s_capabilities_decide_the_recipe_and_the_search(pretend: BackendRecord) -> None:
    facts = DataFacts(train_images=500, median_side=400)
    for name, expected in (("torch", True), ("pretend", False)):
        config = dataclasses.replace(make_config(), backend=name)  # as a resolved config names it
        assert uses_photo_plan(config, facts) is expected and probes_only(config, True, False) is expected
        probe = dataclasses.replace(config, strategy="probe", linear_probe=True, pretrained=True)
        assert linear_probe_only(probe) is expected
        two_stage = dataclasses.replace(probe, strategy="two-stage")
        assert ("probe_c" in ignored_options(two_stage)) is not expected
    assert pretend.refused_options() == {"mixup", "time_budget"}
    scratch = dataclasses.replace(make_config(), model="tutorial-cnn", strategy="scratch", epochs=10.0, lr=1e-3)
    assert "mixup" in default_space(scratch, set())
    assert "mixup" not in default_space(dataclasses.replace(scratch, backend="pretend"), set())  # refused: not searched


def test_a_registered_backend_s_bundles_find_its_runtime_exports_and_explainer(pretend: BackendRecord,
                                                                              tmp_path: Path) -> None:
    bundle = untrained_bundle(tmp_path)
    update_bundle_info(bundle, backend="pretend")
    assert native_of("pretend") == "torch"
    classifier = Classifier.load(bundle, runtime="torch")
    image = make_image(tmp_path / "red.png", (255, 0, 0))
    assert classifier.explain(image, top_k=1).layer  # the record's explainer
    with pytest.raises(ImgclfError, match="cannot export .*, a pretend model; choose onnx"):
        export(bundle, "torchscript")
    with pytest.raises(ImgclfError, match="a pretend model has no int8 export"):
        export(bundle, "onnx", quantize="int8")
    with pytest.raises(ImgclfError, match="is a pretend model; embeddings come from torch models"):
        Embedder.load(bundle)
    with pytest.raises(ImgclfError, match="is a unknown model; this imgclf loads torch and tensorflow"):
        native_of("unknown", "x")
