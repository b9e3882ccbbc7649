"""Predict and embed split among 2 gloo processes (torchrun, or --nproc): the rows one process gives, in the same
order, resumable from finished parts; the one-line refusals; the cache reader that reads only the rows it is asked."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folder, run_cli, run_process, untrained_bundle
from processes import run_python

from imgclf import api, distributed
from imgclf.data.shards import PixelRows
from imgclf.deploy.predict import PredictionRow, expand_inputs
from imgclf.deploy.predict_parts import predict_in_parts
from imgclf.deploy.writers import join_parts, open_writer
from imgclf.distributed import World
from imgclf.errors import ImgclfError


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained tiny bundle and 13 images (one unreadable): (bundle, image folder)."""
    root = tmp_path_factory.mktemp("distributed-infer")
    images = make_class_folder(root / "images", per_class=4, seed=5)
    (images / "green" / "broken.png").write_bytes(b"not an image")
    return untrained_bundle(root), images


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.distributed
@pytest.mark.subprocess
def test_a_resumed_two_process_predict_reuses_the_finished_part_and_matches_one_process(job, tmp_path: Path) -> None:
    bundle, images = job
    paths = expand_inputs([str(images)])
    with open_writer("csv", tmp_path / "one.csv", ["blue", "green", "red"]) as write:  # what one process writes
        for row in api.predict(bundle, paths):
            write(row)
    out = tmp_path / "two.csv"
    # rank 1 of 2 finishes its part, then the job is killed (here: rank 1 alone, in this process, no process group)
    assert predict_in_parts(str(bundle), paths, "csv", out, World(1, 2), top_k=5, min_confidence=0.0, tta=None,
                            batch_size=64, runtime="auto", device="auto") is None
    [part] = (tmp_path / ".two.csv.parts").glob("*/rows-*.csv")
    assert part.name == "rows-0000000007-0000000013.csv"
    kept = _rows(part)
    kept[1][1] = "from-the-kept-part"  # a recomputed part would not say this
    with open(part, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)

    resumed = run_process("predict", str(bundle), str(images), "--out", str(out), "--nproc", "2")  # torchrun
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 6 of 13 images" in resumed.stderr
    assert resumed.stderr.count("13 images in") == 1  # rank 0 alone reports
    expected = _rows(tmp_path / "one.csv")
    expected[8][1] = "from-the-kept-part"  # header + rows 0..6 come before the kept part's first row
    assert _rows(out) == expected  # every row, in input order, the unreadable one included
    assert not (tmp_path / ".two.csv.parts").exists()


@pytest.mark.distributed
@pytest.mark.subprocess
def test_embed_under_the_torchrun_entry_point_matches_one_process(job, tmp_path: Path) -> None:
    bundle, images = job
    one = api.embed(bundle, str(images))
    ranks = run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "imgclf", "embed",
                       str(bundle), str(images), "--out", str(tmp_path / "two.npz"),
                       env={"IMGCLF_HOME": str(tmp_path / "another-home")}, timeout=180)  # nothing to reuse
    assert ranks.returncode == 0, ranks.stderr
    assert ranks.stderr.count("embeddings of 13 images") == 1 and "computed now" in ranks.stderr
    two = np.load(tmp_path / "two.npz")
    assert list(two["paths"]) == [str(path) for path in one.paths] and list(two["errors"]) == one.errors
    np.testing.assert_array_equal(two["vectors"], one.vectors)
    assert sum(bool(error) for error in two["errors"]) == 1


def test_a_tensorflow_model_or_stdin_is_refused_in_one_line_before_starting(job, tmp_path: Path) -> None:
    bundle, images = job
    keras = shutil.copytree(bundle, tmp_path / "keras-model")
    description = json.loads((keras / "model.json").read_text())
    (keras / "model.json").write_text(json.dumps({**description, "backend": "tensorflow"}))
    refused = run_cli("predict", str(keras), str(images), "--out", str(tmp_path / "p.csv"), "--nproc", "2")
    assert refused.returncode == 2 and "--backend torch" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    with pytest.raises(ImgclfError, match="@list.txt"):
        api.check_distributable(None, ["-"])


def test_more_processes_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ImgclfError, match="--nproc 2 with --device cuda: this machine has 1 GPU"):
        distributed.check_nproc_device(2, "cuda")
    distributed.check_nproc_device(2, "cpu")
    assert distributed.rank_device("auto", World(0, 2, 0)) == "cuda:0"
    with pytest.raises(ImgclfError, match="2 processes on this machine but 1 GPU"):
        distributed.rank_device("cuda", World(1, 2, 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ImgclfError, match="no CUDA GPU is visible"):
        distributed.check_nproc_device(2, "cuda")
    assert distributed.rank_device("auto", World(1, 2, 1)) == "cpu"


@pytest.mark.parametrize("output_format", ["csv", "json", "jsonl"])
def test_joined_parts_are_the_file_one_writer_writes(tmp_path: Path, output_format: str) -> None:
    rows = [PredictionRow(f"img{i}.png", top=[("a", 0.75), ("b", 0.25)], probabilities=np.array([0.75, 0.25]))
            for i in range(5)] + [PredictionRow("bad.png", error="not an image")]
    with open_writer(output_format, tmp_path / "whole", ["a", "b"]) as write:
        for row in rows:
            write(row)
    parts = [tmp_path / "part-1", tmp_path / "part-2"]
    for part, chunk in zip(parts, (rows[:2], rows[2:])):
        with open_writer("jsonl" if output_format == "json" else output_format, part, ["a", "b"]) as write:
            for row in chunk:
                write(row)
    assert join_parts(output_format, parts, tmp_path / "joined") == (6, 1)
    assert (tmp_path / "joined").read_bytes() == (tmp_path / "whole").read_bytes()


def test_shares_of_the_cache_are_disjoint_complete_and_read_only_their_rows(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (101, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    reader = PixelRows(tmp_path / "pixels.npy")
    assert len(reader) == 101 and reader.shape == pixels.shape
    shares = [reader.share(World(rank, 3)) for rank in range(3)]
    assert sorted(row for share in shares for row in share) == list(range(101))
    np.testing.assert_array_equal(np.concatenate([reader[share.start:share.stop] for share in shares]), pixels)
    shuffled = np.random.default_rng(1).permutation(101)[:40]
    np.testing.assert_array_equal(reader[shuffled], pixels[shuffled])  # the order asked for, not file order
    np.testing.assert_array_equal(reader[[5, 5, 4, -1]], pixels[[5, 5, 4, -1]])
    np.testing.assert_array_equal(reader[pixels[:, 0, 0, 0] > 128], pixels[pixels[:, 0, 0, 0] > 128])
    np.testing.assert_array_equal(reader[7], pixels[7])
    with pytest.raises(IndexError):
        reader[[101]]


def test_a_cache_too_large_for_memory_feeds_the_same_batches_through_pixel_rows(tmp_path: Path) -> None:
    from imgclf.data.augment_presets import PRESETS
    from imgclf.data.batches import BatchLoader
    from imgclf.data.cache import build_cache
    from imgclf.data.shards import training_pixels

    files = sorted(make_class_folder(tmp_path / "data", per_class=5).rglob("*.png"))
    cache = build_cache(files, size=(16, 16), cache_root=tmp_path / "cache")
    assert training_pixels(cache) is cache.pixels  # small: the memory map
    streamed = training_pixels(cache, limit=cache.pixels.nbytes - 1)
    assert isinstance(streamed, PixelRows)
    rows, targets = np.arange(len(files)), torch.arange(len(files))
    mapped_batches, streamed_batches = (
        list(BatchLoader(pixels, rows, targets, 4, PRESETS["standard"], (0.5,) * 3, (0.25,) * 3, seed=3))
        for pixels in (cache.pixels, streamed))
    for (mapped, mapped_targets), (read, read_targets) in zip(mapped_batches, streamed_batches, strict=True):
        torch.testing.assert_close(read, mapped, rtol=0, atol=0)
        assert torch.equal(read_targets, mapped_targets)
