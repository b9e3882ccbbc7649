"""The package face: ``import imgclf`` gives the public API, and it stays the API whatever else gets imported."""

from __future__ import annotations

import importlib
import sys

import imgclf


def test_the_models_function_survives_an_import_of_the_models_subpackage() -> None:
    importlib.import_module("imgclf.models.registry")  # what training, predict and the docs script do first
    assert callable(imgclf.models)
    assert any(info.name == "fastnet" for info in imgclf.models("fastnet"))
    assert sys.modules["imgclf.models"].create_model is not None  # the subpackage is still there for imports
