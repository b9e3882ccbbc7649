"""The corrections file: reading (one-line errors by line), atomic locked writes, and applying it to a dataset."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from imgclf.data import corrections
from imgclf.data.corrections import Correction
from imgclf.data.sources import read_folder, read_manifest
from imgclf.errors import ImgclfError

FAKE_JPEG = b"\xff\xd8\xff\xe0 not decoded here"
HEADER = "path,action,label,reason,time\n"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FAKE_JPEG)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            for index in range(2):
                touch(root / split / name / f"{split}-{name}{index}.jpg")
    touch(root / "test" / "Dogs" / "test-Dogs0.jpg")
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def labels(dataset) -> dict[str, tuple[str, ...]]:
    return {item.path.name: item.labels for item in dataset.items}


# --- reading ------------------------------------------------------------------------------------


def test_reads_rows_and_the_latest_row_per_path_wins(tmp_path: Path) -> None:
    file = write(tmp_path / "c.csv", HEADER
                 + "a/1.jpg,exclude,,blurry,2026-01-02T00:00:00Z\n"
                 + "a/1.jpg,keep,,looked,2026-01-01T00:00:00Z\n"
                 + "\n"
                 + '"b/2,x.jpg",relabel,dog,"said so, twice",2026-01-01T00:00:00Z\n'
                 + "cats,rename,cat,,\n")
    rows = corrections.read(file)
    assert [(r.path, r.action, r.label) for r in rows] == [
        ("a/1.jpg", "exclude", ""), ("b/2,x.jpg", "relabel", "dog"), ("cats", "rename", "cat")]
    assert rows[1].reason == "said so, twice"


@pytest.mark.parametrize(("body", "expected"), [
    ("a.jpg,delete,,,\n", r"c\.csv:2: unknown action 'delete'; expected one of keep, exclude, relabel, rename"),
    ("a.jpg,keep,,,\nb.jpg,exclude\n", r"c\.csv:3: 2 cell\(s\) where the header has 5"),
    ("a.jpg,relabel,,,\n", r"c\.csv:2: relabel of a\.jpg has no label"),
    (",exclude,,,\n", r"c\.csv:2: empty path"),
    ("a.jpg,keep,,,yesterday\n", r"c\.csv:2: time 'yesterday' is not ISO 8601"),
    ("a,rename,b,,\nb,rename,c,,\nc,rename,a,,\n", r"c\.csv: class renames form a cycle \(a -> b -> c -> a\)"),
    ("a,rename,a,,\n", r"c\.csv:2: rename of a to itself"),
])
def test_a_bad_row_is_one_line_naming_file_and_line(tmp_path: Path, body: str, expected: str) -> None:
    file = write(tmp_path / "c.csv", HEADER + body)
    with pytest.raises(ImgclfError, match=expected) as caught:
        corrections.read(file)
    assert "\n" not in str(caught.value)


def test_a_bad_header_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ImgclfError, match=r"c\.csv:1: the header is file,what; expected path,action,label"):
        corrections.read(write(tmp_path / "c.csv", "file,what\nx,y\n"))
    with pytest.raises(ImgclfError, match=r"none\.csv does not exist"):
        corrections.read(tmp_path / "none.csv")


def test_rename_options_and_their_cycles() -> None:
    rows = corrections.parse_rename_options(["Dogs=dog"])
    assert rows == [Correction("Dogs", "rename", "dog", "--rename")]
    with pytest.raises(ImgclfError, match=r"--rename 'Dogs': expected OLD=NEW"):
        corrections.parse_rename_options(["Dogs"])
    with pytest.raises(ImgclfError, match=r"--rename: class renames form a cycle \(Dogs -> dog -> Dogs\)"):
        corrections.combine(rows, corrections.parse_rename_options(["dog=Dogs"]), "--rename")


# --- writing ------------------------------------------------------------------------------------


def test_upsert_replaces_one_decision_and_remove_undoes_it(tmp_path: Path) -> None:
    file = tmp_path / "c.csv"
    corrections.upsert(file, Correction("a.jpg", "exclude", reason="blurry"))
    corrections.upsert(file, Correction("b.jpg", "relabel", "dog"))
    rows = corrections.upsert(file, Correction("a.jpg", "keep"))
    assert [(r.path, r.action) for r in corrections.read(file)] == [("b.jpg", "relabel"), ("a.jpg", "keep")]
    assert rows == corrections.read(file)
    assert all(row.time.endswith("Z") for row in rows)
    corrections.remove(file, "a.jpg")
    assert [r.path for r in corrections.read(file)] == ["b.jpg"]
    with pytest.raises(ImgclfError, match="unknown action 'move'"):
        corrections.upsert(file, Correction("c.jpg", "move"))
    assert [r.path for r in corrections.read(file)] == ["b.jpg"]  # a refused decision leaves the file as it was


def _decide(file: str, start: int) -> None:
    for index in range(start, start + 20):
        corrections.upsert(Path(file), Correction(f"img{index}.jpg", "exclude"))


def test_two_writers_at_once_lose_no_decision(tmp_path: Path) -> None:
    file = tmp_path / "c.csv"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_decide, args=(str(file), start)) for start in (0, 100)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert {r.path for r in corrections.read(file)} == {f"img{i}.jpg" for i in [*range(20), *range(100, 120)]}


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "c.csv"
    corrections.write(file, [Correction("a.jpg", "exclude")])
    before = file.read_bytes()

    def fail(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corrections, "to_csv", lambda rows: "path,action,label,reason,time\n" + "x" * 10)
    monkeypatch.setattr("imgclf.files._flush_to_disk", fail)
    with pytest.raises(OSError):
        corrections.upsert(file, Correction("b.jpg", "exclude"))
    assert file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.csv.lock", "c.csv"]


def test_digest_names_the_decisions_not_their_times_or_order() -> None:
    one = [Correction("a.jpg", "exclude", "", "x", "2026-01-01T00:00:00Z"), Correction("b", "rename", "c")]
    two = [Correction("b", "rename", "c", "y"), Correction("a.jpg", "exclude", "", "", "2027-01-01T00:00:00Z")]
    assert corrections.digest(one) == corrections.digest(two)
    assert corrections.digest(one) != corrections.digest([Correction("a.jpg", "exclude")])
    assert len(corrections.digest([])) == 64


# --- applying -----------------------------------------------------------------------------------


def test_apply_excludes_relabels_renames_and_reports_the_missing(data: Path) -> None:
    dataset = read_folder(data)
    rows = [
        Correction("train/cat/train-cat0.jpg", "exclude"),
        Correction(str(data / "train" / "dog" / "train-dog1.jpg"), "relabel", "cat"),
        Correction("train/cat/train-cat1.jpg", "keep"),
        Correction("Dogs", "rename", "dog"),
        Correction("train/cat/gone.jpg", "exclude"),
        Correction("wolves", "rename", "wolf"),
    ]
    fixed, report = corrections.apply(dataset, rows)
    assert fixed.classes == ["cat", "dog"]
    names = labels(fixed)
    assert "train-cat0.jpg" not in names
    assert names["train-dog1.jpg"] == ("cat",)
    assert names["test-Dogs0.jpg"] == ("dog",)
    assert len(fixed.items) == len(dataset.items) - 1
    assert report.excluded == [str(data / "train" / "cat" / "train-cat0.jpg")]
    assert report.kept == 1
    assert report.renamed == {"Dogs -> dog": 1}
    assert [row.path for row in report.missing] == ["train/cat/gone.jpg", "wolves"]
    assert "2 row(s) name a file or class not in the data" in report.summary()


def test_relabel_to_a_renamed_class_follows_the_rename_and_new_classes_appear(data: Path) -> None:
    rows = [Correction("test/cat/test-cat0.jpg", "relabel", "kitten"), Correction("kitten", "rename", "tiger"),
            Correction("tiger", "rename", "big cat")]
    fixed, report = corrections.apply(read_folder(data), rows)
    assert labels(fixed)["test-cat0.jpg"] == ("big cat",)
    assert "big cat" in fixed.classes
    assert [row.path for row in report.missing] == ["kitten", "tiger"]  # no image had those names before


def test_a_split_manifest_with_absolute_paths_matches_relative_rows(data: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    rows = "".join(f"{item.path},{item.label},{item.split}\n" for item in read_folder(data).items)
    manifest = write(tmp_path / "run" / "split.csv", "path,label,split\n" + rows)
    fixed, report = corrections.apply(read_manifest(manifest), [Correction("test/dog/test-dog0.jpg", "exclude")])
    assert "test-dog0.jpg" not in labels(fixed)
    assert report.missing == []
    assert corrections.path_for(read_folder(data), data / "test" / "dog" / "test-dog0.jpg") == "test/dog/test-dog0.jpg"


def test_a_short_path_that_names_two_files_is_reported_not_guessed(tmp_path: Path) -> None:
    touch(tmp_path / "d" / "train" / "cat" / "1.jpg")
    touch(tmp_path / "d" / "test" / "cat" / "1.jpg")
    touch(tmp_path / "d" / "test" / "dog" / "2.jpg")
    fixed, report = corrections.apply(read_folder(tmp_path / "d"), [Correction("cat/1.jpg", "exclude")])
    assert len(fixed.items) == 3
    assert [row.path for row in report.ambiguous] == ["cat/1.jpg"]
