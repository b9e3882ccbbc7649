"""The decode-once cache: reuse, invalidation, broken files, parallel build, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, make_image

from imgclf.data import cache as cache_module
from imgclf.data.cache import build_cache


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_second_build_reuses_the_entry(class_folder: Path, tmp_path: Path) -> None:
    files = files_of(class_folder)
    cold = build_cache(files, (8, 8), cache_root=tmp_path / "c", source="s")
    warm = build_cache(files, (8, 8), cache_root=tmp_path / "c", source="s")
    assert not cold.reused and warm.reused
    assert warm.pixels.shape == (30, 8, 8, 3) and warm.pixels.dtype == np.uint8
    np.testing.assert_array_equal(cold.pixels, warm.pixels)
    assert warm.ok.all() and warm.widths.tolist() == [16] * 30 and set(warm.modes.tolist()) == {"RGB"}


def test_changed_file_invalidates_and_replaces_the_old_entry(class_folder: Path, tmp_path: Path) -> None:
    files = files_of(class_folder)
    first = build_cache(files, (8, 8), cache_root=tmp_path / "c", source="s")
    before = np.array(first.pixels[0])
    make_image(files[0], (0, 0, 0), 16)
    os.utime(files[0], ns=(1, 1))  # a different mtime even on coarse filesystems
    second = build_cache(files, (8, 8), cache_root=tmp_path / "c", source="s")
    assert not second.reused
    assert second.pixels[0].mean() < before.mean()
    entries = [p for p in (tmp_path / "c").iterdir()]
    assert entries == [second.directory], "the superseded entry of the same source is deleted"


def test_size_and_policy_are_part_of_the_key(class_folder: Path, tmp_path: Path) -> None:
    files = files_of(class_folder)
    a = build_cache(files, (8, 8), cache_root=tmp_path / "c", source="s")
    b = build_cache(files, (4, 4), cache_root=tmp_path / "c", source="s")
    c = build_cache(files, (4, 4), policy="pad", cache_root=tmp_path / "c", source="s")
    assert len({a.directory, b.directory, c.directory}) == 3
    assert b.pixels.shape[1:] == (4, 4, 3)


def test_broken_files_are_recorded_not_fatal(class_folder: Path, tmp_path: Path) -> None:
    (class_folder / "red" / "empty.png").write_bytes(b"")
    (class_folder / "red" / "text.png").write_text("not an image")
    files = files_of(class_folder)
    cache = build_cache(files, (8, 8), cache_root=tmp_path / "c")
    broken = dict(cache.broken())
    assert set(broken) == {class_folder / "red" / "empty.png", class_folder / "red" / "text.png"}
    assert "empty" in broken[class_folder / "red" / "empty.png"]
    assert cache.ok.sum() == 30
    reused = build_cache(files, (8, 8), cache_root=tmp_path / "c")
    assert reused.reused and dict(reused.broken()) == broken


def test_facts_only_entry_has_no_pixels(class_folder: Path, tmp_path: Path) -> None:
    cache = build_cache(files_of(class_folder), None, cache_root=tmp_path / "c")
    assert cache.pixels is None and len(cache.digests) == 30 and cache.heights.tolist() == [16] * 30


def test_parallel_build_equals_serial(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "many", per_class=100, size=8)
    files = files_of(root)
    assert len(files) > cache_module.PARALLEL_THRESHOLD
    parallel = build_cache(files, (8, 8), cache_root=tmp_path / "p", workers=2)
    serial = build_cache(files, (8, 8), cache_root=tmp_path / "s", workers=1)
    np.testing.assert_array_equal(parallel.pixels, serial.pixels)
    assert parallel.digests.tolist() == serial.digests.tolist()


def test_interrupted_build_leaves_no_entry(class_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = cache_module.decode_file
    monkeypatch.setattr(cache_module, "decode_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_cache(files_of(class_folder), (8, 8), cache_root=tmp_path / "c", workers=1)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.setattr(cache_module, "decode_file", real)
    assert not build_cache(files_of(class_folder), (8, 8), cache_root=tmp_path / "c").reused


def test_a_new_entry_decodes_only_files_no_entry_of_its_settings_holds(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_class_folder(tmp_path / "data", per_class=10, size=16)
    old = files_of(root)
    build_cache(old, (8, 8), cache_root=tmp_path / "c", source="old")
    added = [make_image(root / "red" / f"new{k}.png", (250, 10, 10), 16, seed=k) for k in range(3)]
    facts = build_cache(old, None, cache_root=tmp_path / "c", source="old")  # other settings: never a donor
    decoded: list[Path] = []
    real = cache_module.decode_file
    monkeypatch.setattr(cache_module, "decode_file", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    both = build_cache([added[0], *old, *added[1:]], (8, 8), cache_root=tmp_path / "c", source="update")
    assert sorted(decoded) == sorted(added)
    monkeypatch.setattr(cache_module, "decode_file", real)
    cold = build_cache([added[0], *old, *added[1:]], (8, 8), cache_root=tmp_path / "cold")
    np.testing.assert_array_equal(both.pixels, cold.pixels)
    assert both.digests.tolist() == cold.digests.tolist() and both.widths.tolist() == cold.widths.tolist()
    assert facts.pixels is None and len(facts.digests) == len(old)
