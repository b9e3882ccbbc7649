"""Nothing imgclf loads is ever unpickled: a crafted pickle in a bundle, checkpoint, index, export, weights file or
cache is refused with a one-line error (or ignored and recomputed), and the code it carries never runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folder, make_image, run_cli, untrained_bundle

import imgclf
from imgclf.deploy.metadata import weights_file_digest
from imgclf.engines.checkpoint import load_checkpoint
from imgclf.errors import ImgclfError
from imgclf.models import create_model
from imgclf.models.pretrained import load_pretrained


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.mkdir, (str(self.marker),)


def raw_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights": Payload(marker)})


def torch_pickle(marker: Path) -> bytes:
    """A torch.save zip file whose data.pkl holds the payload, as a poisoned checkpoint would."""
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, buffer)
    return buffer.getvalue()


def object_npy(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("trust"))


def poisoned_copy(bundle: Path, tmp_path: Path, file: str, data: bytes) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, symlinks=True)
    (copy / file).write_bytes(data)
    return copy


def refused(load: Callable[[], object], marker: Path) -> str:
    with pytest.raises(ImgclfError) as raised:
        load()
    message = str(raised.value)
    assert "\n" not in message and not marker.exists()
    return message


@pytest.mark.parametrize("make", [raw_pickle, torch_pickle], ids=["raw pickle", "torch zip"])
def test_bundle_weights_holding_a_pickle_are_refused(bundle: Path, tmp_path: Path, make: Callable[[Path], bytes]
                                                     ) -> None:
    marker = tmp_path / "ran"
    poisoned = poisoned_copy(bundle, tmp_path, "weights.safetensors", make(marker))
    assert "weights.safetensors" in refused(lambda: imgclf.load(poisoned, runtime="torch"), marker)


def test_an_exported_onnx_file_holding_a_pickle_is_refused(bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    poisoned = poisoned_copy(bundle, tmp_path, "model.onnx", raw_pickle(marker))
    # metadata that matches the bundle, as a real export's does, so the file itself is opened
    (poisoned / "model.onnx.json").write_text(json.dumps({"weights_sha256": weights_file_digest(poisoned)}))
    assert "ONNX Runtime cannot load it" in refused(lambda: imgclf.load(poisoned, runtime="onnx"), marker)


@pytest.mark.parametrize("make", [raw_pickle, torch_pickle], ids=["raw pickle", "torch zip"])
def test_checkpoints_and_weights_files_holding_a_pickle_are_refused(tmp_path: Path, make: Callable[[Path], bytes]
                                                                    ) -> None:
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(make(marker))
    assert "not a readable imgclf checkpoint" in refused(lambda: load_checkpoint(checkpoint), marker)
    weights = tmp_path / "backbone.pth"
    weights.write_bytes(make(marker))
    model = create_model("fastnet", 3, image_size=16, widths=[8, 16, 16], depth=1)
    assert "cannot read weights file" in refused(lambda: load_pretrained(model, "fastnet", weights), marker)


def test_an_index_holding_a_pickle_is_refused(bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    images = make_class_folder(tmp_path / "images", per_class=2)
    imgclf.build_index(bundle, images, tmp_path / "index")
    (tmp_path / "index" / "vectors.npy").write_bytes(object_npy(marker))
    query = make_image(tmp_path / "query.png", (220, 30, 30))
    assert "the index is damaged" in refused(lambda: imgclf.query_index(tmp_path / "index", query), marker)


def test_caches_holding_pickles_are_never_unpickled(bundle: Path, tmp_path: Path, isolated_home: Path) -> None:
    """The decode and embedding caches live in IMGCLF_HOME, which another user may be able to write to."""
    marker = tmp_path / "ran"
    images = make_class_folder(tmp_path / "images", per_class=2)
    imgclf.inspect(images, out=tmp_path / "inspect")
    imgclf.embed(bundle, images)
    arrays = [path for path in isolated_home.rglob("*") if path.suffix in (".npy", ".npz")]
    assert arrays
    for path in arrays:
        path.write_bytes(object_npy(marker))
    for again in (lambda: imgclf.inspect(images, out=tmp_path / "inspect"), lambda: imgclf.embed(bundle, images)):
        try:
            again()
        except ImgclfError as error:  # refusing is as good as recomputing; running the payload is not
            assert "\n" not in str(error)
    assert not marker.exists()


def test_cli_refuses_a_poisoned_bundle_with_one_line(bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    poisoned = poisoned_copy(bundle, tmp_path, "weights.safetensors", torch_pickle(marker))
    image = make_image(tmp_path / "a.png", (220, 30, 30))
    result = run_cli("predict", str(poisoned), str(image), env={"COLUMNS": "300"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights.safetensors" in errors[0]
    assert not marker.exists()
