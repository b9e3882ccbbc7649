"""Turn whatever images a user has into one list of labelled items.

Three kinds of source end up as the same :class:`ImageDataset`:

- a folder tree, ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``;
  nested class folders (``animals/puppy/``) keep their path as the label;
- a CSV manifest with ``path`` and ``label`` (or multi-label ``labels``
  separated by ``|``) and an optional ``split`` column;
- ``cifar10`` / ``cifar100``, extracted once from the official archive into a
  folder tree (:mod:`imgclf.data.cifar`).

Nothing here opens an image: a file that turns out to be broken is found and
reported by the decoder, so discovery stays fast on 60,000 files.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgclf.data.cifar import CIFAR_NAMES, prepare_cifar
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, atomic_path
from imgclf.paths import absolute_path

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
MULTILABEL_SEPARATOR = "|"
UNSPLIT = "unsplit"  # the count column for items that have no split yet


@dataclass(frozen=True)
class Item:
    """One image file with its label(s) and, once known, its split."""

    path: Path
    labels: tuple[str, ...]
    split: str | None = None

    @property
    def label(self) -> str:
        """The label of a single-label item (the first of a multi-label one)."""
        return self.labels[0]


@dataclass
class ImageDataset:
    """Items plus what is known about them as a whole.

    ``ignored`` lists files that were seen but cannot be training images
    (other extensions, images with no class folder), so a user can tell why
    a count is lower than expected.
    """

    items: list[Item]
    classes: list[str]
    multilabel: bool = False
    source: str = ""
    ignored: list[Path] = field(default_factory=list)
    # what a corrections file and --rename did to it (imgclf.data.corrections.correct_dataset), for the run's record
    corrections: dict | None = None

    @property
    def splits(self) -> list[str]:
        """The splits present, in train/val/test order."""
        present = {item.split for item in self.items}
        return [split for split in SPLITS if split in present]

    def split_items(self, split: str) -> list[Item]:
        """The items of one split, in dataset order."""
        return [item for item in self.items if item.split == split]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class per split: ``{class: {split: count}}``."""
        counts: dict[str, dict[str, int]] = {name: dict.fromkeys(self.splits, 0) for name in self.classes}
        for item in self.items:
            for label in item.labels:
                split = item.split or UNSPLIT
                counts[label][split] = counts[label].get(split, 0) + 1
        return counts

    def with_items(self, items: list[Item]) -> ImageDataset:
        """A copy holding ``items`` instead (same classes, so label indices stay put)."""
        return replace(self, items=items)


def load_source(spec: str | os.PathLike[str], archive: Path | None = None) -> ImageDataset:
    """Read a folder tree, a CSV manifest or a named CIFAR archive.

    ``archive`` is a local copy of the CIFAR archive (the CLI's ``--from``);
    without it the archive is downloaded once when a CIFAR name is given.
    """
    text = str(spec)
    if text.lower() in CIFAR_NAMES and not Path(text).exists():
        dataset = read_folder(prepare_cifar(text.lower(), archive))
        dataset.source = text.lower()
        return dataset
    if archive is not None:
        raise ImgclfError(f"--from is only for {' / '.join(CIFAR_NAMES)}; {text} is a path, so drop --from")
    path = Path(text).expanduser()
    if not path.exists():
        raise ImgclfError(
            f"{text} does not exist; give a folder of class folders, a CSV manifest, or one of {', '.join(CIFAR_NAMES)}"
        )
    if path.is_dir():
        return read_folder(path)
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    raise ImgclfError(f"{text} is a file but not a .csv manifest; give a folder of class folders or a CSV with path,label")


def read_folder(root: Path) -> ImageDataset:
    """Read ``root/<class>/*`` or ``root/<split>/<class>/*``.

    The split layout is recognised when every top-level folder is a split
    name (train, val/valid/validation, test), or when two kinds of split
    folder are there: other folders beside them are then ignored, with one
    warning line naming them. Otherwise top-level folders are classes.
    Hidden files and folders are skipped.
    """
    root = root.resolve()
    top_dirs = [entry for entry in _visible_entries(root) if entry.is_dir()]
    if not top_dirs:
        raise ImgclfError(f"{root} has no sub-folders; put images in one folder per class, e.g. {root}/cat/1.jpg")
    split_names = [entry.name for entry in top_dirs if entry.name.lower() in SPLIT_ALIASES]
    # One folder named like a split ("train" next to "car", "bus") is a class; two kinds of
    # split folder (train plus val/test) are the split layout, even beside other folders:
    # public datasets often ship descriptions or sample images there.
    split_layout = len({SPLIT_ALIASES[name.lower()] for name in split_names}) > 1 or len(split_names) == len(top_dirs)
    others = [entry.name for entry in top_dirs if entry.name.lower() not in SPLIT_ALIASES]
    if split_layout and others:
        log.warning(f"warning: {root}: using the split folders ({', '.join(split_names)}); "
                    f"ignored {len(others)} other folder(s): {', '.join(others[:5])}{', ...' if len(others) > 5 else ''}")
        top_dirs = [entry for entry in top_dirs if entry.name.lower() in SPLIT_ALIASES]
    items: list[Item] = []
    ignored: list[Path] = []
    if split_layout:
        # Loose files in root are not walked below (the class layout's walk reports them itself).
        ignored += [Path(entry.path) for entry in _visible_entries(root) if entry.is_file()]
        for entry in top_dirs:
            split = SPLIT_ALIASES[entry.name.lower()]
            found, skipped = _walk_class_folders(Path(entry.path), split)
            items += found
            ignored += skipped
    else:
        found, ignored_inside = _walk_class_folders(root, None)
        items += found
        ignored += ignored_inside
    if not items:
        raise ImgclfError(
            f"{root} holds no images with a known extension ({', '.join(sorted(IMAGE_EXTENSIONS))}) inside class folders"
        )
    items.sort(key=lambda item: (item.split or "", str(item.path)))
    classes = sorted({item.label for item in items})
    return ImageDataset(items=items, classes=classes, source=str(root), ignored=sorted(ignored))


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _walk_class_folders(root: Path, split: str | None) -> tuple[list[Item], list[Path]]:
    """Every image below ``root`` labelled by its folder path relative to ``root``.

    Files directly in ``root`` have no class and are returned as ignored.
    """
    items: list[Item] = []
    ignored: list[Path] = []
    seen: set[str] = set()
    # followlinks: a class folder may be a symlink into shared storage; the
    # visited set stops a link that points back up the tree from looping.
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        folder_path = Path(folder)
        label = folder_path.relative_to(root).as_posix()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = folder_path / name
            if label == "." or path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(path)
            else:
                items.append(Item(path=path, labels=(label,), split=split))
    return items, ignored


def read_manifest(csv_path: Path) -> ImageDataset:
    """Read a CSV with ``path`` and ``label`` or ``labels`` columns, optional ``split``.

    Paths are relative to the CSV's folder (absolute paths are kept). A file
    that does not exist is kept as an item: the decoder reports it with the
    other unreadable files instead of failing the whole run.
    """
    csv_path = csv_path.resolve()
    try:
        return _read_manifest_rows(csv_path)
    except UnicodeDecodeError:
        raise ImgclfError(f"{csv_path} is not UTF-8 text; save it as UTF-8 (CSV UTF-8 in spreadsheet programs)") from None
    except csv.Error as error:
        raise ImgclfError(f"{csv_path} is not a readable CSV ({error}); check quoting and separators") from None


def _read_manifest_rows(csv_path: Path) -> ImageDataset:
    with csv_path.open(newline="", encoding="utf-8-sig", errors=PATH_BYTES) as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        reader.fieldnames = columns
        if "path" not in columns or not ({"label", "labels"} & set(columns)):
            raise ImgclfError(
                f"{csv_path} needs a header with 'path' and 'label' (or 'labels' for multi-label), found {columns or 'none'}"
            )
        multilabel = "labels" in columns
        label_column = "labels" if multilabel else "label"
        # line_num, not a row count: blank lines are skipped by the reader but still lines of the file.
        items = [_manifest_item(csv_path, reader.line_num, row, label_column, multilabel) for row in reader]
    if not items:
        raise ImgclfError(f"{csv_path} has a header but no rows; add one row per image")
    classes = sorted({label for item in items for label in item.labels})
    # file names may be any bytes (read back as written); labels are text and must be UTF-8
    if any("\udc80" <= character <= "\udcff" for label in classes for character in label):  # escaped bytes
        raise UnicodeDecodeError("utf-8", b"", 0, 1, "a label is not UTF-8")
    return ImageDataset(items=items, classes=classes, multilabel=multilabel, source=str(csv_path))


def _manifest_item(csv_path: Path, row_number: int, row: dict[str, str], label_column: str, multilabel: bool) -> Item:
    where = f"{csv_path}:{row_number}"
    raw_path = (row.get("path") or "").strip()
    raw_labels = (row.get(label_column) or "").strip()
    if not raw_path:
        raise ImgclfError(f"{where}: empty path; every row needs the image's path relative to the CSV")
    if multilabel:
        labels = tuple(dict.fromkeys(part.strip() for part in raw_labels.split(MULTILABEL_SEPARATOR) if part.strip()))
    else:
        labels = (raw_labels,) if raw_labels else ()
    if not labels and multilabel:
        # an image with no label at all is refused rather than read as "none of them": an empty cell is far more
        # often a row someone forgot than a deliberate negative; a real "none" is a label of its own
        raise ImgclfError(f"{where}: the labels cell of {raw_path} has no label ({raw_labels!r}); write one or more "
                          f"labels separated by {MULTILABEL_SEPARATOR} (e.g. cat{MULTILABEL_SEPARATOR}dog), "
                          "or a label such as 'none' for an image that shows none of them")
    if not labels:
        raise ImgclfError(f"{where}: no label for {raw_path}; fill the {label_column} column")
    raw_split = (row.get("split") or "").strip().lower()
    if raw_split and raw_split not in SPLIT_ALIASES:
        raise ImgclfError(f"{where}: split '{raw_split}' is not one of train, val, test; fix the split column")
    return Item(path=csv_path.parent / raw_path, labels=labels, split=SPLIT_ALIASES.get(raw_split))


def write_manifest(dataset: ImageDataset, csv_path: Path) -> None:
    """Save items with absolute paths and their splits, readable by :func:`read_manifest`.

    This is how a split the tool made is kept, so every later command sees
    exactly the same images on each side.
    """
    label_column = "labels" if dataset.multilabel else "label"
    with atomic_path(csv_path) as partial, partial.open("w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", label_column, "split"])
        for item in dataset.items:
            writer.writerow([absolute_path(item.path), MULTILABEL_SEPARATOR.join(item.labels), item.split or ""])


def label_indices(items: list[Item], classes: list[str]) -> np.ndarray:
    """Each single-label item's position in ``classes`` (a bundle's or dataset's order), as int64."""
    index = {name: position for position, name in enumerate(classes)}
    return np.array([index[item.label] for item in items], dtype=np.int64)


def label_histogram(items: list[Item]) -> Counter[str]:
    """How many items carry each label."""
    return Counter(label for item in items for label in item.labels)
