"""Read the item lists that ``index build`` and ``match`` take: a CSV with an ``image`` column, or a folder.

Paths in a CSV are relative to the CSV's folder (so a catalogue folder can
be moved as a whole); every other column is kept and shown with results.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES
from imgclf.paths import absolute_path

IMAGE_COLUMN = "image"


def read_items(source: str | Path, required: Sequence[str] = (IMAGE_COLUMN,)) -> list[dict[str, str]]:
    """Rows of ``source`` (a CSV file, or a folder of images) as dicts with ``image`` an absolute path.

    A folder yields every image below it, with ``label`` set to its folder
    name when the images sit in class folders.
    """
    path = Path(source)
    if path.is_dir():
        if set(required) - {IMAGE_COLUMN, "label"}:
            raise ImgclfError(f"{path} is a folder; this needs a CSV with columns {', '.join(required)}")
        return _folder_items(path)
    if not path.is_file():
        raise ImgclfError(f"{path}: no such file or folder; give a CSV (columns {', '.join(required)}) or a folder")
    return _csv_items(path, required)


def _folder_items(folder: Path) -> list[dict[str, str]]:
    from imgclf.deploy.predict import expand_inputs

    items = []
    for image in expand_inputs([folder]):
        relative = image.relative_to(folder)
        item = {IMAGE_COLUMN: absolute_path(image)}
        if len(relative.parts) > 1:
            item["label"] = relative.parts[0]
        items.append(item)
    return items


def _csv_items(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig", errors=PATH_BYTES) as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            rows = [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ImgclfError(f"{path}: cannot read this CSV ({error})") from None
    missing = [name for name in required if name not in columns]
    if missing:
        raise ImgclfError(f"{path}: no {', '.join(repr(name) for name in missing)} column; expected a header with "
                          f"{', '.join(required)} (found: {', '.join(columns) or 'no header'})")
    if not rows:
        raise ImgclfError(f"{path}: the CSV has a header but no rows")
    for line, row in enumerate(rows, start=2):
        empty = [name for name in required if not row.get(name)]
        if empty:
            raise ImgclfError(f"{path}, line {line}: empty {', '.join(empty)}; every row needs {', '.join(required)}")
        if row.get(IMAGE_COLUMN):  # optional where a caller does not require it (a new product named only)
            image = Path(row[IMAGE_COLUMN])
            row[IMAGE_COLUMN] = absolute_path(image if image.is_absolute() else path.parent / image)
    return rows
