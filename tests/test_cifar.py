"""Tests for imgclf.data.cifar on tiny archives in the real CIFAR format (no network)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data import cifar
from imgclf.data.cifar import CIFAR_NAMES, prepare_cifar
from imgclf.errors import ImgclfError

CLASSES = {"cifar10": ["airplane", "automobile", "bird"], "cifar100": ["apple", "bee", "couch"]}
PER_BATCH = 3


def pixels(seed: int) -> np.ndarray:
    """An HWC image whose every (row, col, channel) value differs from its neighbours'."""
    rows, cols, chans = np.indices((32, 32, 3))
    return ((chans * 85 + rows * 7 + cols * 3 + seed * 11) % 256).astype(np.uint8)


def planar(image: np.ndarray) -> np.ndarray:
    """The archive's row layout, built element by element: R plane, G plane, B plane."""
    row = np.empty(3072, np.uint8)
    for c in range(3):
        for y in range(32):
            for x in range(32):
                row[c * 1024 + y * 32 + x] = image[y, x, c]
    return row


def batch(seeds: list[int], labels_key: bytes, n_classes: int) -> dict:
    return {
        b"batch_label": b"fake",
        b"data": np.stack([planar(pixels(s)) for s in seeds]),
        labels_key: [s % n_classes for s in seeds],
        b"filenames": [f"img_{s}.png".encode() for s in seeds],
    }


def members(name: str) -> tuple[dict[str, object], dict[str, list[tuple[str, int]]]]:
    """Pickle-able members of a fake archive and, per split, the expected (class, seed)."""
    names = CLASSES[name]
    if name == "cifar10":
        folder, labels_key = "cifar-10-batches-py", b"labels"
        train, test = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        content: dict[str, object] = {
            f"{folder}/batches.meta": {b"label_names": [n.encode() for n in names], b"num_vis": 3072}
        }
    else:
        folder, train, test, labels_key = "cifar-100-python", ["train"], ["test"], b"fine_labels"
        content = {
            f"{folder}/meta": {
                b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [b"fruit", b"insects"],
            }
        }
    expected: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    seed = 0
    for split, batch_names in (("train", train), ("test", test)):
        for member in batch_names:
            seeds = list(range(seed, seed + PER_BATCH))
            seed += PER_BATCH
            data = batch(seeds, labels_key, len(names))
            if name == "cifar100":
                data[b"coarse_labels"] = [s % 2 for s in seeds]
            content[f"{folder}/{member}"] = data
            expected[split] += [(names[s % len(names)], s) for s in seeds]
    return content, expected


def write_tar(path: Path, content: dict[str, object]) -> Path:
    """A gzipped tar whose members are protocol-2 pickles (bytes given as-is)."""
    with tarfile.open(path, "w:gz") as tar:
        for member, obj in content.items():
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_archive(tmp_path: Path, name: str) -> tuple[Path, dict[str, list[tuple[str, int]]]]:
    content, expected = members(name)
    return write_tar(tmp_path / f"{name}-fake.tar.gz", content), expected


def leftovers(home: Path) -> list[str]:
    """Hidden temp folders or part files an unfinished run could leave."""
    return sorted(p.name for p in home.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_extracts_tree_classes_counts_and_pixels(tmp_path: Path, name: str) -> None:
    archive, expected = fake_archive(tmp_path, name)
    home = tmp_path / "home"
    root = prepare_cifar(name, archive, home=home)

    assert root == home / name
    assert (root / ".complete").read_text().strip() == md5(archive)
    assert sorted(p.name for p in root.iterdir()) == [".complete", "test", "train"]
    assert leftovers(home) == []
    for split, items in expected.items():
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES[name])
        assert sum(1 for _ in (root / split).rglob("*.png")) == len(items)
        for index, (class_name, seed) in enumerate(items):
            with Image.open(root / split / class_name / f"{index:05d}.png") as img:
                assert img.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(img), pixels(seed))
    assert len(expected["train"]) == (5 if name == "cifar10" else 1) * PER_BATCH


def test_second_call_touches_nothing(tmp_path: Path) -> None:
    archive, _ = fake_archive(tmp_path, "cifar10")
    root = prepare_cifar("cifar10", archive, home=tmp_path)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    # The archive is not even read: a path that no longer exists still returns.
    archive.unlink()
    assert prepare_cifar("cifar10", archive, home=tmp_path) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_download_file_url_verifies_and_reuses(tmp_path: Path) -> None:
    archive, _ = fake_archive(tmp_path, "cifar100")
    home = tmp_path / "home"
    root = prepare_cifar("cifar100", home=home, url=archive.as_uri(), md5=md5(archive))

    downloaded = home / "cifar-100-python.tar.gz"
    assert downloaded.read_bytes() == archive.read_bytes()
    assert (root / ".complete").exists()
    assert leftovers(home) == []
    # A verified download is reused rather than fetched again.
    shutil.rmtree(root)
    prepare_cifar("cifar100", home=home, url=(tmp_path / "gone.tar.gz").as_uri(), md5=md5(archive))
    assert (root / ".complete").exists()


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path) -> None:
    archive, _ = fake_archive(tmp_path, "cifar10")
    home = tmp_path / "home"
    with pytest.raises(ImgclfError, match="md5 .* expected 0{32}.*--from FILE"):
        prepare_cifar("cifar10", home=home, url=archive.as_uri(), md5="0" * 32)
    assert list(home.iterdir()) == []


def test_download_failure_suggests_from(tmp_path: Path) -> None:
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(ImgclfError, match=f"could not download {url} .*--from FILE"):
        prepare_cifar("cifar10", home=tmp_path / "home", url=url)
    assert leftovers(tmp_path / "home") == []


def test_from_unofficial_archive_warns_and_works(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive, _ = fake_archive(tmp_path, "cifar10")
    root = prepare_cifar("cifar10", archive, home=tmp_path / "home")
    warning = next(record.getMessage() for record in caplog.records
                   if record.levelname == "WARNING" and "not the official archive" in record.getMessage())
    assert str(archive) in warning
    assert f"md5 {md5(archive)}, expected {cifar._SPECS['cifar10'].md5}); using it anyway" in warning
    assert (root / ".complete").exists()


def test_from_archive_matching_md5_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive, _ = fake_archive(tmp_path, "cifar10")
    prepare_cifar("cifar10", archive, home=tmp_path / "home", md5=md5(archive))
    assert "not the official archive" not in caplog.text


def test_from_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImgclfError, match="--from .*nope.tar.gz"):
        prepare_cifar("cifar10", tmp_path / "nope.tar.gz", home=tmp_path / "home")


def test_corrupt_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tarball" * 10)
    with pytest.raises(ImgclfError, match=f"{bad} is not a readable tar.gz archive"):
        prepare_cifar("cifar10", bad, home=tmp_path / "home")
    assert not (tmp_path / "home" / "cifar10").exists()


def test_missing_member(tmp_path: Path) -> None:
    content, _ = members("cifar10")
    del content["cifar-10-batches-py/test_batch"]
    archive = write_tar(tmp_path / "partial.tar.gz", content)
    with pytest.raises(ImgclfError, match=f"{archive} lacks cifar-10-batches-py/test_batch"):
        prepare_cifar("cifar10", archive, home=tmp_path / "home")


def test_wrong_shape(tmp_path: Path) -> None:
    content, _ = members("cifar100")
    content["cifar-100-python/test"][b"data"] = np.zeros((PER_BATCH, 1024), np.uint8)  # type: ignore[index]
    archive = write_tar(tmp_path / "shape.tar.gz", content)
    with pytest.raises(ImgclfError, match=r"cifar-100-python/test: expected b'data' .*shape \(3, 1024\)"):
        prepare_cifar("cifar100", archive, home=tmp_path / "home")


def test_unsafe_class_name(tmp_path: Path) -> None:
    content, _ = members("cifar10")
    content["cifar-10-batches-py/batches.meta"] = {b"label_names": [b"airplane", b"../evil", b"bird"]}
    archive = write_tar(tmp_path / "evil.tar.gz", content)
    with pytest.raises(ImgclfError, match="not a valid folder name"):
        prepare_cifar("cifar10", archive, home=tmp_path / "home")


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.flag}",)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    flag = tmp_path / "pwned"
    content, _ = members("cifar10")
    content["cifar-10-batches-py/data_batch_3"][b"labels"] = Exploit(flag)  # type: ignore[index]
    archive = write_tar(tmp_path / "evil.tar.gz", content)
    with pytest.raises(ImgclfError, match=r"data_batch_3 contains a pickled posix\.system, which imgclf refuses"):
        prepare_cifar("cifar10", archive, home=tmp_path / "home")
    assert not flag.exists()
    assert not (tmp_path / "home" / "cifar10").exists()


def test_interrupted_extraction_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, _ = fake_archive(tmp_path, "cifar10")
    home = tmp_path / "home"
    real_save = Image.Image.save
    calls = 0

    def failing_save(self: Image.Image, *args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 4:
            raise OSError(28, "No space left on device")
        real_save(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(ImgclfError, match="could not write .*No space left"):
        prepare_cifar("cifar10", archive, home=home)
    assert sorted(p.name for p in home.iterdir()) == []

    monkeypatch.undo()
    assert (prepare_cifar("cifar10", archive, home=home) / ".complete").exists()


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ImgclfError, match="'mnist'.*cifar10, cifar100"):
        prepare_cifar("mnist", home=tmp_path)
    assert list(tmp_path.iterdir()) == []
