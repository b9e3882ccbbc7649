"""Decisions about a dataset kept beside it, never in it: exclusions, relabels and class renames.

A user (or the review page) fixes a dataset without touching its folders by
writing a corrections file, a CSV with the header ``path,action,label,reason,time``:

- ``keep``: the image was looked at and is fine; changes nothing, recorded so a
  page knows it was decided;
- ``exclude``: the image is left out of every split;
- ``relabel``: the image's class becomes ``label`` (an existing class or a new one;
  ``a|b`` for a multi-label dataset);
- ``rename``: ``path`` is a class name, ``label`` its new name: the class is renamed
  everywhere, or merged into ``label`` when that class exists (how a dataset whose
  splits name a class two ways is used as it is).

One row per path (per class for renames): when a path appears twice the row
with the later ``time`` (ISO 8601, UTC) wins, and on equal times the later
line. A file's path is matched against the dataset's files by its trailing
parts, so ``train/roses/1.jpg`` (relative to the data folder, as
:func:`path_for` writes it) or an absolute path both work, and a run's
``split.csv`` with absolute paths is matched by the same rows. A row whose file
or class is not in the dataset is reported, not fatal: files move.

Writers (the review page, two of them on one file) go through :func:`upsert`
and :func:`remove`, which re-read the file under a lock, change one row and
write it atomically, so neither loses the other's decisions and a reader never
sees half a file. :func:`digest` names the decisions a run used.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from imgclf.data.sources import MULTILABEL_SEPARATOR, ImageDataset, Item
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, write_text_atomic

HEADER = ("path", "action", "label", "reason", "time")
ACTIONS = ("keep", "exclude", "relabel", "rename")
NEEDS_LABEL = frozenset({"relabel", "rename"})
FILE_ACTIONS = frozenset({"keep", "exclude", "relabel"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Correction:
    """One decision: about a file (``keep``, ``exclude``, ``relabel``) or a class (``rename``)."""

    path: str
    action: str
    label: str = ""
    reason: str = ""
    time: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """What the row decides about: ``("class", name)`` for a rename, ``("file", path)`` otherwise."""
        return ("class" if self.action == "rename" else "file", self.path)

    def row(self) -> list[str]:
        """The CSV cells, in :data:`HEADER` order."""
        return [self.path, self.action, self.label, self.reason, self.time]


@dataclass
class CorrectionReport:
    """What a set of corrections did to a dataset, and which rows found nothing to act on."""

    excluded: list[str] = field(default_factory=list)
    relabelled: list[tuple[str, str, str]] = field(default_factory=list)  # (path, old label(s), new label(s))
    renamed: dict[str, int] = field(default_factory=dict)  # "old -> new": images renamed
    kept: int = 0
    missing: list[Correction] = field(default_factory=list)  # rows whose file or class is not in the dataset
    ambiguous: list[Correction] = field(default_factory=list)  # rows whose path matches several files

    def summary(self) -> str:
        """One line for the console and the run's log."""
        parts = [f"{len(self.excluded)} excluded", f"{len(self.relabelled)} relabelled",
                 f"{sum(self.renamed.values())} renamed ({len(self.renamed)} class rename(s))", f"{self.kept} kept"]
        if self.missing:
            parts.append(f"{len(self.missing)} row(s) name a file or class not in the data")
        if self.ambiguous:
            parts.append(f"{len(self.ambiguous)} row(s) match several files and were not applied")
        return "corrections: " + ", ".join(parts)

    def to_json(self) -> dict:
        """The report as plain data (a run's metadata, inspect's JSON)."""
        return {"excluded": len(self.excluded), "relabelled": len(self.relabelled), "renamed": dict(self.renamed),
                "kept": self.kept, "missing": [c.path for c in self.missing],
                "ambiguous": [c.path for c in self.ambiguous]}


def now() -> str:
    """The current time as the ``time`` column writes it (ISO 8601, UTC, seconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read(path: Path) -> list[Correction]:
    """The decisions in ``path``, one per path (the latest wins); one-line errors name the file and line."""
    if not path.is_file():
        raise ImgclfError(f"{path} does not exist or is not a file; give a corrections CSV with the header "
                          f"{','.join(HEADER)} (imgclf review writes one)")
    try:
        text = path.read_text(encoding="utf-8-sig", errors=PATH_BYTES)
    except OSError as error:
        raise ImgclfError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    return parse(text, str(path))


def parse(text: str, where: str) -> list[Correction]:
    """The decisions in a corrections CSV's ``text``; ``where`` names it in errors."""
    try:
        rows = list(_rows(text, where))
    except csv.Error as error:
        raise ImgclfError(f"{where} is not a readable CSV ({error}); check its quoting") from None
    chosen: dict[tuple[str, str], tuple[str, int, Correction]] = {}
    for order, correction in enumerate(rows):
        previous = chosen.get(correction.key)
        if previous is None or (correction.time, order) >= previous[:2]:
            chosen[correction.key] = (correction.time, order, correction)
    decided = [entry[2] for entry in sorted(chosen.values(), key=lambda entry: entry[1])]
    renames(decided, where)  # a cycle is an error at once, not when training starts
    return decided


def _rows(text: str, where: str) -> Iterator[Correction]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    columns = [cell.strip().lower() for cell in header or []]
    if "path" not in columns or "action" not in columns or set(columns) - set(HEADER):
        raise ImgclfError(f"{where}:1: the header is {','.join(columns) or 'empty'}; expected {','.join(HEADER)}")
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        line = reader.line_num
        if len(cells) != len(columns):
            raise ImgclfError(f"{where}:{line}: {len(cells)} cell(s) where the header has {len(columns)} "
                              f"({','.join(columns)}); quote a value that holds a comma")
        values = {column: cell.strip() for column, cell in zip(columns, cells, strict=True)}
        yield checked(Correction(**{name: values.get(name, "") for name in HEADER}), f"{where}:{line}")


def checked(correction: Correction, where: str) -> Correction:
    """``correction`` if it is well formed, else a one-line error that starts with ``where``."""
    if correction.action not in ACTIONS:
        raise ImgclfError(f"{where}: unknown action '{correction.action}'; expected one of {', '.join(ACTIONS)}")
    if not correction.path:
        raise ImgclfError(f"{where}: empty path; a row needs the image's path (or, for rename, the class name)")
    if correction.action in NEEDS_LABEL and not correction.label:
        raise ImgclfError(f"{where}: {correction.action} of {correction.path} has no label; write the new class")
    if correction.action == "rename" and correction.label == correction.path:
        raise ImgclfError(f"{where}: rename of {correction.path} to itself; remove the row or give another name")
    if correction.time:
        try:
            datetime.fromisoformat(correction.time.replace("Z", "+00:00"))
        except ValueError:
            raise ImgclfError(f"{where}: time '{correction.time}' is not ISO 8601 "
                              "(e.g. 2026-01-31T12:00:00Z); fix it or leave it empty") from None
    return correction


def renames(corrections: Iterable[Correction], where: str) -> dict[str, str]:
    """Each renamed class's final name, chains followed (a -> b, b -> c gives a -> c); a cycle is an error."""
    direct = {c.path: c.label for c in corrections if c.action == "rename"}
    final: dict[str, str] = {}
    for start in direct:
        chain = [start]
        while chain[-1] in direct:
            following = direct[chain[-1]]
            if following in chain:
                cycle = " -> ".join([*chain[chain.index(following):], following])
                raise ImgclfError(f"{where}: class renames form a cycle ({cycle}); remove one of these renames")
            chain.append(following)
        final[start] = chain[-1]
    return final


def parse_rename_options(values: Iterable[str]) -> list[Correction]:
    """``--rename OLD=NEW`` values as rename rows (they come after a file's rows, so they win)."""
    rows = []
    for value in values:
        old, separator, new = value.partition("=")
        if not separator or not old.strip() or not new.strip():
            raise ImgclfError(f"--rename {value!r}: expected OLD=NEW, e.g. --rename test_roses=roses")
        rows.append(checked(Correction(old.strip(), "rename", new.strip(), "--rename"), f"--rename {value}"))
    return rows


def combine(file_rows: list[Correction], extra: list[Correction], where: str) -> list[Correction]:
    """``file_rows`` with ``extra`` (command-line renames) replacing rows with the same key; cycles checked."""
    merged = {row.key: row for row in file_rows}
    merged.update({row.key: row for row in extra})
    rows = list(merged.values())
    renames(rows, where)
    return rows


def to_csv(corrections: Iterable[Correction]) -> str:
    """The corrections file's text: the header, then one row per decision."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(correction.row() for correction in corrections)
    return buffer.getvalue()


def write(path: Path, corrections: Iterable[Correction]) -> Path:
    """Write the corrections file atomically: a reader sees the old file or the new one, never half of one."""
    return write_text_atomic(path, to_csv(corrections))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file, so writers take turns at read-change-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def upsert(path: Path, correction: Correction) -> list[Correction]:
    """Record one decision in ``path`` (replacing the row with the same key); returns every row now there.

    The file is re-read under the lock, so a decision another writer made since
    this one last read it is kept. A row without a time gets the current one.
    """
    correction = checked(correction if correction.time else replace(correction, time=now()), str(path))
    with _locked(path):
        rows = [row for row in _current(path) if row.key != correction.key] + [correction]
        renames(rows, str(path))
        write(path, rows)
    return rows


def remove(path: Path, name: str, kind: str = "file") -> list[Correction]:
    """Forget the decision about ``name`` (a file's path, or a class for ``kind="class"``): undo. Returns the rows."""
    with _locked(path):
        rows = [row for row in _current(path) if row.key != (kind, name)]
        write(path, rows)
    return rows


def change(path: Path, upserts: Iterable[Correction] = (), removals: Iterable[tuple[str, str]] = ()
           ) -> list[Correction]:
    """Many decisions in one locked read-change-write (a review page's bulk action and its undo): each of
    ``upserts`` replaces the row with its key, each ``(kind, name)`` of ``removals`` is forgotten. Returns the rows."""
    stamp = now()
    added = [checked(row if row.time else replace(row, time=stamp), str(path)) for row in upserts]
    dropped = set(removals) | {row.key for row in added}
    with _locked(path):
        rows = [row for row in _current(path) if row.key not in dropped] + added
        renames(rows, str(path))
        write(path, rows)
    return rows


def _current(path: Path) -> list[Correction]:
    return read(path) if path.exists() else []


def digest(corrections: Iterable[Correction]) -> str:
    """sha256 of the decisions (path, action, label; sorted): what a run records to name the corrections it used.

    Reasons and times are left out: they do not change the data, so the same
    decisions written at another time name the same training data.
    """
    lines = sorted(f"{c.action}\t{c.path}\t{c.label}" for c in corrections)
    return hashlib.sha256("\n".join(lines).encode("utf-8", errors=PATH_BYTES)).hexdigest()


def path_for(dataset: ImageDataset, file: Path) -> str:
    """How a corrections file should name ``file``: relative to the data folder when inside it, else absolute."""
    root = data_root(dataset)
    absolute = os.path.abspath(file)
    if root is not None and os.path.commonpath([root, absolute]) == root:
        return Path(os.path.relpath(absolute, root)).as_posix()
    return Path(absolute).as_posix()


def data_root(dataset: ImageDataset) -> str | None:
    """The folder a dataset's relative paths start from: the data folder, a CSV's folder, else their common folder."""
    source = Path(dataset.source) if dataset.source else None
    if source is not None and source.is_dir():
        return os.path.abspath(source)
    if source is not None and source.is_file():
        return os.path.abspath(source.parent)
    if not dataset.items:
        return None
    return os.path.commonpath([os.path.abspath(item.path.parent) for item in dataset.items])


def apply(dataset: ImageDataset, corrections: list[Correction]) -> tuple[ImageDataset, CorrectionReport]:
    """The dataset with ``corrections`` applied, and a report of what applied and what found nothing.

    Relabels come first, then renames, so a file relabelled to a class that is
    renamed ends up in the new name. The classes are those the corrected items
    carry (a merge removes one, a relabel may add one).
    """
    report = CorrectionReport()
    decisions = _file_decisions(dataset.items, corrections, report)
    final_names = renames(corrections, "corrections")
    items: list[Item] = []
    for item in dataset.items:
        decision = decisions.get(id(item))
        if decision is not None and decision.action == "exclude":
            report.excluded.append(str(item.path))
            continue
        if decision is not None and decision.action == "relabel":
            labels = _new_labels(decision.label, dataset.multilabel)
            report.relabelled.append((str(item.path), MULTILABEL_SEPARATOR.join(item.labels), decision.label))
            item = replace(item, labels=labels)
        if decision is not None and decision.action == "keep":
            report.kept += 1
        items.append(_renamed(item, final_names, report))
    known = {label for item in dataset.items for label in item.labels}
    report.missing += [c for c in corrections if c.action == "rename" and c.path not in known]
    classes = sorted({label for item in items for label in item.labels})
    return replace(dataset, items=items, classes=classes), report


def _new_labels(label: str, multilabel: bool) -> tuple[str, ...]:
    if not multilabel:
        return (label,)
    return tuple(dict.fromkeys(part.strip() for part in label.split(MULTILABEL_SEPARATOR) if part.strip()))


def _renamed(item: Item, final_names: dict[str, str], report: CorrectionReport) -> Item:
    if not any(label in final_names for label in item.labels):
        return item
    for label in item.labels:
        if label in final_names:
            change = f"{label} -> {final_names[label]}"
            report.renamed[change] = report.renamed.get(change, 0) + 1
    labels = tuple(dict.fromkeys(final_names.get(label, label) for label in item.labels))
    return replace(item, labels=labels)


def _file_decisions(items: list[Item], corrections: list[Correction],
                    report: CorrectionReport) -> dict[int, Correction]:
    """Each file row matched to the item it names (by ``id``); rows that match none or several are reported."""
    rows = [c for c in corrections if c.action in FILE_ACTIONS]
    depths = {len(_parts(c.path)) for c in rows if not os.path.isabs(c.path)}
    by_tail: dict[tuple[int, tuple[str, ...]], list[Item]] = {}
    by_absolute: dict[str, Item] = {}
    for item in items:
        parts = _parts(os.path.abspath(item.path))
        by_absolute[os.path.normpath(os.path.abspath(item.path))] = item
        for depth in depths:
            by_tail.setdefault((depth, parts[-depth:]), []).append(item)
    decisions: dict[int, Correction] = {}
    for row in rows:
        if os.path.isabs(row.path):
            absolute = by_absolute.get(os.path.normpath(row.path))
            matches = [absolute] if absolute is not None else []
        else:
            parts = _parts(row.path)
            matches = by_tail.get((len(parts), parts), [])
        if not matches:
            report.missing.append(row)
        elif len(matches) > 1:
            report.ambiguous.append(row)
        else:
            decisions[id(matches[0])] = row
    return decisions


def _parts(path: str) -> tuple[str, ...]:
    return tuple(part for part in Path(os.path.normpath(path)).as_posix().split("/") if part)


def load_corrections(file: str | os.PathLike[str] | None, rename: Iterable[str] = ()) -> list[Correction]:
    """The rows of ``--corrections FILE`` (if given) with ``--rename OLD=NEW`` rows after them (they win)."""
    from_file = read(Path(file).expanduser()) if file else []
    where = f"{file} with --rename" if file else "--rename"
    return combine(from_file, parse_rename_options(rename), where)


def correct_dataset(dataset: ImageDataset, file: str | os.PathLike[str] | None = None,
                    rename: Iterable[str] = ()) -> ImageDataset:
    """``dataset`` with ``--corrections FILE`` and ``--rename`` applied; the dataset unchanged when neither is given.

    The one call every command that reads data makes (train, tune, inspect,
    evaluate, update), so they all see the same corrected data. What applied
    is logged on one line, rows that found nothing as a warning (a file that
    moved is not a reason to stop), and recorded in the dataset's
    ``corrections`` (file, digest, report) for the run to keep.
    """
    rename = list(rename)
    if not file and not rename:
        return dataset
    rows = load_corrections(file, rename)
    fixed, report = apply(dataset, rows)
    log.info(report.summary())
    unmatched = [*report.missing, *report.ambiguous]
    if unmatched:
        names = ", ".join(row.path for row in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        log.warning(f"warning: {len(unmatched)} correction(s) found no single file or class in {dataset.source} "
                    f"and were not applied: {names}")
    fixed.corrections = {"file": os.path.abspath(file) if file else None, "rename": rename, "rows": len(rows),
                         "digest": digest(rows), "applied": report.to_json()}
    return fixed
