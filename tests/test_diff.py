"""``imgclf diff``: images added, removed, relabelled, moved or changed between two runs, and per-class changes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_image, run_cli

from imgclf.data.sources import ImageDataset, Item, write_manifest
from imgclf.runs import RunDirectory


def _run(folder: Path, items: list[Item], recall: dict[str, float], digests: dict[str, str] | None = None) -> Path:
    """A run folder with only what diff reads: split.csv, data_manifest.csv and its evaluation's metrics."""
    folder.mkdir(parents=True)
    run = RunDirectory(folder)
    write_manifest(ImageDataset(items, sorted({item.label for item in items})), run.split_file)
    paths = [str(item.path) for item in items]
    run.write_data_manifest(paths, [(digests or {}).get(path, f"hash-{Path(path).name}") for path in paths])
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "metrics.json").write_text(json.dumps(
        {"per_class": {name: {"recall": value} for name, value in recall.items()}}))
    return folder


def test_diff_lists_each_kind_of_change_and_the_classes(tmp_path: Path) -> None:
    files = {name: make_image(tmp_path / "images" / f"{name}.png", (100, 100, 100)) for name in "abcde"}
    a = _run(tmp_path / "a", [Item(files["a"], ("red",), "train"), Item(files["b"], ("red",), "val"),
                              Item(files["c"], ("blue",), "test"), Item(files["d"], ("blue",), "train")],
             {"red": 0.9, "blue": 0.8})
    b = _run(tmp_path / "b", [Item(files["a"], ("red",), "train"), Item(files["b"], ("blue",), "val"),
                              Item(files["c"], ("blue",), "val"), Item(files["e"], ("green",), "train")],
             {"red": 0.95, "blue": 0.7, "green": 1.0}, digests={str(files["a"]): "edited"})
    done = run_cli("diff", str(a), str(b), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [row["path"] for row in result["added"]] == [str(files["e"])]
    assert [row["path"] for row in result["removed"]] == [str(files["d"])]
    assert [(row["a"]["labels"], row["b"]["labels"]) for row in result["relabelled"]] == [(["red"], ["blue"])]
    assert [(row["path"], row["a"]["split"], row["b"]["split"]) for row in result["moved"]] == [
        (str(files["c"]), "test", "val")]
    assert [row["path"] for row in result["changed"]] == [str(files["a"])]
    classes = {row["name"]: row for row in result["classes"]}
    assert classes["blue"]["a"] == 0.8 and classes["blue"]["b"] == 0.7
    assert abs(classes["blue"]["change"] + 0.1) < 1e-9
    assert classes["green"]["a"] is None and classes["green"]["change"] is None
    table = run_cli("diff", str(a), str(b))
    assert table.returncode == 0
    shown = " ".join(table.stderr.split())  # the console wraps long lines
    assert "1 added, 1 removed, 1 relabelled, 1 moved between splits, 1 with changed content" in shown
    assert "-10.0 pts" in table.stderr


def test_diff_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run_cli("diff", str(tmp_path / "empty"), str(tmp_path / "empty"))
    assert done.returncode == 2 and "is not an imgclf run" in done.stderr and "Traceback" not in done.stderr
