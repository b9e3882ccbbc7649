"""Discovery of labelled images: folder trees, split folders, CSV manifests, load_source."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imgclf.data.sources import ImageDataset, Item, load_source, read_folder, read_manifest, write_manifest
from imgclf.errors import ImgclfError

# Discovery never opens a file, so placeholder bytes are enough for an "image".
FAKE_JPEG = b"\xff\xd8\xff\xe0 not really decoded here"


def touch(path: Path, data: bytes = FAKE_JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def labels_by_name(dataset: ImageDataset) -> dict[str, tuple[str, ...]]:
    return {item.path.name: item.labels for item in dataset.items}


# --- folder trees -------------------------------------------------------------------------------


def test_class_folders_give_sorted_classes_labels_and_no_split(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "zebra" / "z1.jpg")
    touch(root / "cat" / "c1.jpg")
    touch(root / "cat" / "c2.PNG")
    touch(root / "dog" / "d1.jpeg")
    dataset = read_folder(root)
    assert dataset.classes == ["cat", "dog", "zebra"]
    assert labels_by_name(dataset) == {
        "c1.jpg": ("cat",),
        "c2.PNG": ("cat",),
        "d1.jpeg": ("dog",),
        "z1.jpg": ("zebra",),
    }
    assert all(item.split is None for item in dataset.items)
    assert dataset.splits == []
    assert dataset.multilabel is False
    assert dataset.ignored == []
    assert all(item.path.is_absolute() and item.path.exists() for item in dataset.items)
    assert dataset.source == str(root.resolve())


def test_item_label_is_the_first_label() -> None:
    item = Item(path=Path("x.jpg"), labels=("a", "b"))
    assert item.label == "a"
    assert item.split is None


def test_split_layout_maps_aliases(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "cat" / "t1.jpg")
    touch(root / "train" / "dog" / "t2.jpg")
    touch(root / "valid" / "cat" / "v1.jpg")
    touch(root / "test" / "dog" / "s1.jpg")
    dataset = read_folder(root)
    assert dataset.classes == ["cat", "dog"]
    splits = {item.path.name: (item.label, item.split) for item in dataset.items}
    assert splits == {
        "t1.jpg": ("cat", "train"),
        "t2.jpg": ("dog", "train"),
        "v1.jpg": ("cat", "val"),
        "s1.jpg": ("dog", "test"),
    }
    assert dataset.splits == ["train", "val", "test"]
    assert [item.path.name for item in dataset.split_items("val")] == ["v1.jpg"]
    counts = dataset.class_counts()
    assert counts == {"cat": {"train": 1, "val": 1, "test": 0}, "dog": {"train": 1, "val": 0, "test": 1}}


def test_validation_folder_is_val(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "cat" / "a.jpg")
    touch(root / "Validation" / "cat" / "b.jpg")
    dataset = read_folder(root)
    assert {item.path.name: item.split for item in dataset.items} == {"a.jpg": "train", "b.jpg": "val"}
    assert dataset.classes == ["cat"]


def test_a_class_named_train_next_to_other_classes_is_just_a_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "a.jpg")
    touch(root / "cat" / "b.jpg")
    dataset = read_folder(root)
    assert dataset.classes == ["cat", "train"]
    assert all(item.split is None for item in dataset.items)


def test_nested_class_folders_keep_their_path_as_label(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "animals" / "puppy" / "x.jpg")
    touch(root / "animals" / "kitten" / "y.jpg")
    touch(root / "plants" / "z.jpg")
    dataset = read_folder(root)
    assert dataset.classes == ["animals/kitten", "animals/puppy", "plants"]
    assert labels_by_name(dataset) == {"x.jpg": ("animals/puppy",), "y.jpg": ("animals/kitten",), "z.jpg": ("plants",)}


def test_nested_class_folders_inside_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "animals" / "puppy" / "x.jpg")
    touch(root / "val" / "animals" / "puppy" / "y.jpg")
    dataset = read_folder(root)
    assert dataset.classes == ["animals/puppy"]
    assert {item.path.name: item.split for item in dataset.items} == {"x.jpg": "train", "y.jpg": "val"}


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "cat" / "a.jpg")
    touch(root / "cat" / ".hidden.jpg")
    touch(root / "cat" / ".thumbs" / "b.jpg")
    touch(root / ".cache" / "c.jpg")
    touch(root / ".DS_Store", b"junk")
    dataset = read_folder(root)
    assert dataset.classes == ["cat"]
    assert [item.path.name for item in dataset.items] == ["a.jpg"]
    assert dataset.ignored == []


def test_hidden_top_level_folder_does_not_break_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "cat" / "a.jpg")
    touch(root / "test" / "cat" / "b.jpg")
    touch(root / ".git" / "objects" / "c.jpg")
    dataset = read_folder(root)
    assert dataset.splits == ["train", "test"]
    assert dataset.classes == ["cat"]


def test_non_images_and_root_level_images_are_reported_as_ignored(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "cat" / "a.jpg")
    notes = touch(root / "cat" / "notes.txt", b"hello")
    stray = touch(root / "stray.jpg")
    readme = touch(root / "README.md", b"# data")
    dataset = read_folder(root)
    assert [item.path.name for item in dataset.items] == ["a.jpg"]
    resolved = {p.resolve() for p in (notes, stray, readme)}
    assert {p.resolve() for p in dataset.ignored} == resolved
    assert len(dataset.ignored) == 3, "each ignored file is listed once"


def test_split_layout_reports_root_and_split_level_files_as_ignored(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "cat" / "a.jpg")
    loose = touch(root / "train" / "loose.jpg")
    top = touch(root / "labels.txt", b"cat")
    dataset = read_folder(root)
    assert [item.path.name for item in dataset.items] == ["a.jpg"]
    assert sorted(p.resolve() for p in dataset.ignored) == sorted([loose.resolve(), top.resolve()])


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(ImgclfError, match="no sub-folders"):
        read_folder(root)
    with pytest.raises(ImgclfError):
        load_source(root)


def test_folder_with_only_loose_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    touch(root / "a.jpg")
    with pytest.raises(ImgclfError, match="one folder per class"):
        read_folder(root)


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "cat" / "notes.txt", b"x")
    (root / "dog").mkdir()
    with pytest.raises(ImgclfError, match="no images"):
        read_folder(root)


def test_load_source_reads_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "cat" / "a.jpg")
    dataset = load_source(str(root))
    assert dataset.classes == ["cat"] and len(dataset.items) == 1


# --- CSV manifests ------------------------------------------------------------------------------


def test_manifest_single_label_relative_paths(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    touch(folder / "img" / "a.jpg")
    touch(folder / "img" / "b.jpg")
    absolute = touch(tmp_path / "elsewhere" / "c.jpg")
    csv_path = write_csv(folder / "m.csv", f"path,label\nimg/a.jpg,cat\nimg/b.jpg,dog\n{absolute},cat\n")
    dataset = read_manifest(csv_path)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.multilabel is False
    assert [item.path for item in dataset.items] == [
        folder.resolve() / "img" / "a.jpg",
        folder.resolve() / "img" / "b.jpg",
        absolute,
    ]
    assert [item.labels for item in dataset.items] == [("cat",), ("dog",), ("cat",)]
    assert all(item.split is None for item in dataset.items)
    assert all(item.path.exists() for item in dataset.items)


def test_manifest_header_is_case_and_space_insensitive_and_allows_bom(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes("\ufeff Path , LABEL \na.jpg,cat\n".encode())
    dataset = read_manifest(csv_path)
    assert [item.labels for item in dataset.items] == [("cat",)]


def test_manifest_split_column(tmp_path: Path) -> None:
    csv_path = write_csv(
        tmp_path / "m.csv",
        "path,label,split\na.jpg,cat,train\nb.jpg,cat,Valid\nc.jpg,dog,test\nd.jpg,dog,validation\ne.jpg,dog,\n",
    )
    dataset = read_manifest(csv_path)
    assert [item.split for item in dataset.items] == ["train", "val", "test", "val", None]


def test_manifest_multilabel(tmp_path: Path) -> None:
    csv_path = write_csv(
        tmp_path / "m.csv",
        "path,labels\na.jpg,beach|sunset\nb.jpg, dog | beach \nc.jpg,cat\nd.jpg,cat|cat\n",
    )
    dataset = read_manifest(csv_path)
    assert dataset.multilabel is True
    assert dataset.classes == ["beach", "cat", "dog", "sunset"]
    assert [item.labels for item in dataset.items] == [("beach", "sunset"), ("dog", "beach"), ("cat",), ("cat",)]


def test_manifest_bad_header_names_the_csv(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "bad.csv", "file,class\na.jpg,cat\n")
    with pytest.raises(ImgclfError, match=r"bad\.csv.*'path' and 'label'"):
        read_manifest(csv_path)


def test_manifest_empty_file_is_an_error(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(ImgclfError, match=r"empty\.csv"):
        read_manifest(csv_path)


def test_manifest_header_only_is_an_error(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "m.csv", "path,label\n")
    with pytest.raises(ImgclfError, match="no rows"):
        read_manifest(csv_path)


@pytest.mark.parametrize(("text", "message"), [
    ("path,label\na.jpg,cat\nb.jpg,\n", r"m\.csv:3: no label for b\.jpg"),
    ("path,labels\na.jpg,cat\nb.jpg,dog\nc.jpg, | \n", r"m\.csv:4: the labels cell of c\.jpg has no label"),
    ("path,label\n ,cat\n", r"m\.csv:2: empty path"),
    ("path,label,split\na.jpg,cat,train\nb.jpg,cat,holdout\n", r"m\.csv:3: split 'holdout'"),
    ("path,label\na.jpg,cat\n\nb.jpg,\n", r"m\.csv:4:"),  # file lines, counted past blank lines
])
def test_manifest_row_errors_name_csv_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ImgclfError, match=message):
        read_manifest(write_csv(tmp_path / "m.csv", text))


def test_manifest_keeps_missing_files_as_items(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    csv_path = write_csv(tmp_path / "m.csv", "path,label\na.jpg,cat\nmissing.jpg,dog\n")
    dataset = read_manifest(csv_path)
    assert [item.path.name for item in dataset.items] == ["a.jpg", "missing.jpg"]
    assert not dataset.items[1].path.exists()
    assert dataset.classes == ["cat", "dog"]


def test_load_source_reads_a_csv(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "M.CSV", "path,label\na.jpg,cat\n")
    dataset = load_source(csv_path)
    assert dataset.classes == ["cat"]


# --- write_manifest round trip ------------------------------------------------------------------


def test_write_then_read_manifest_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "cat" / "a.jpg")
    touch(root / "train" / "dog" / "b.jpg")
    touch(root / "val" / "cat" / "c.jpg")
    touch(root / "test" / "dog" / "d.jpg")
    original = read_folder(root)
    original = original.with_items(original.items + [Item(path=root / "train" / "cat" / "e.jpg", labels=("cat",))])
    out = tmp_path / "out" / "splits.csv"
    out.parent.mkdir()
    write_manifest(original, out)
    assert not out.with_suffix(".csv.tmp").exists()
    again = read_manifest(out)
    assert [item.path.resolve() for item in again.items] == [item.path.resolve() for item in original.items]
    assert [item.labels for item in again.items] == [item.labels for item in original.items]
    assert [item.split for item in again.items] == [item.split for item in original.items]
    assert again.classes == original.classes
    assert again.multilabel is False


def test_write_then_read_multilabel_manifest_round_trip(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    csv_path = write_csv(tmp_path / "in.csv", "path,labels,split\na.jpg,beach|sunset,train\nb.jpg,dog,test\n")
    original = read_manifest(csv_path)
    out = tmp_path / "sub" / "out.csv"
    out.parent.mkdir()
    write_manifest(original, out)
    again = read_manifest(out)
    assert again.multilabel is True
    assert [(item.path, item.labels, item.split) for item in again.items] == [
        (item.path.resolve(), item.labels, item.split) for item in original.items
    ]
    assert again.classes == original.classes


def test_write_manifest_overwrites_an_existing_file(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    out = write_csv(tmp_path / "out.csv", "old,content\n")
    dataset = read_manifest(write_csv(tmp_path / "in.csv", "path,label\na.jpg,cat\n"))
    write_manifest(dataset, out)
    assert [item.labels for item in read_manifest(out).items] == [("cat",)]


# --- load_source errors -------------------------------------------------------------------------


def test_load_source_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ImgclfError, match="does not exist"):
        load_source(str(missing))


def test_load_source_non_csv_file(tmp_path: Path) -> None:
    path = touch(tmp_path / "list.txt", b"a.jpg,cat\n")
    with pytest.raises(ImgclfError, match=r"not a \.csv manifest"):
        load_source(path)


def test_load_source_archive_with_a_path_source(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "cat" / "a.jpg")
    archive = touch(tmp_path / "cifar-10-python.tar.gz", b"x")
    with pytest.raises(ImgclfError, match="--from"):
        load_source(str(root), archive=archive)
    with pytest.raises(ImgclfError, match="--from"):
        load_source(str(tmp_path / "does-not-exist"), archive=archive)


def test_symlinked_class_folders_are_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "dog"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(elsewhere / "d.png")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "data" / "cat" / "c.png")
    (tmp_path / "data" / "dog").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "data" / "cat" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)
    assert read_folder(tmp_path / "data").classes == ["cat", "dog"]


def test_split_folders_beside_other_folders_are_used_with_one_warning(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    for folder in ("train/cat", "train/dog", "test/cat", "unlabeled/cat", "iconic/dog"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "x.png")
    dataset = read_folder(tmp_path)
    assert dataset.classes == ["cat", "dog"]
    assert sorted((item.split, item.label) for item in dataset.items) == [("test", "cat"), ("train", "cat"),
                                                                         ("train", "dog")]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
    warning = warnings[0]
    assert "using the split folders (test, train); ignored 2 other folder(s): iconic, unlabeled" in warning


def test_one_folder_named_like_a_split_is_still_a_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for folder in ("train", "bus", "car"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "x.png")
    assert read_folder(tmp_path).classes == ["bus", "car", "train"]
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def test_non_utf8_csv_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("path,label\ncaf\xe9.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ImgclfError, match="not UTF-8"):
        read_manifest(tmp_path / "latin.csv")
