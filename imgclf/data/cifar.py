"""CIFAR-10 and CIFAR-100 as plain image folders.

The rest of imgclf reads datasets laid out as ``<split>/<class>/<image>``, so
rather than a special loader we turn the official *python* tarballs into that
layout once, under ``datasets_dir()``. Images are saved as PNG because it is
lossless: the pixels on disk are exactly the archive's.

The archive members are pickles. Unpickling can run arbitrary code, and
``--from FILE`` accepts archives from anywhere, so members are read with an
unpickler that only rebuilds numpy arrays and refuses every other global.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.console import progress_bar
from imgclf.errors import ImgclfError
from imgclf.paths import datasets_dir

log = logging.getLogger(__name__)


CIFAR_NAMES: tuple[str, ...] = ("cifar10", "cifar100")

COMPLETE_MARKER = ".complete"
_CHUNK = 1 << 20
_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE

Batch = tuple[np.ndarray, np.ndarray]  # N x 32 x 32 x 3 uint8 images, N int labels


@dataclass(frozen=True)
class _Spec:
    """Where one CIFAR variant lives online and inside its tarball."""

    url: str
    md5: str
    folder: str  # top-level folder inside the tarball
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels_key: bytes
    names_key: bytes

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        labels_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": _Spec(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        labels_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

# Exactly the globals a pickled numpy array refers to (``numpy.core`` before
# numpy 2, ``numpy._core`` since), plus ``_codecs.encode``, which Python 3
# uses to pickle bytes at protocol 2. None of them can run arbitrary code.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers only."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise ImgclfError(
            f"{self._source} contains a pickled {module}.{name}, which imgclf "
            "refuses to load because it could run code; use the official CIFAR archive"
        )


def prepare_cifar(
    name: str,
    archive: Path | None = None,
    *,
    home: Path | None = None,
    url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Make ``<home>/<name>/{train,test}/<class>/<index>.png`` and return its path.

    ``archive`` is a local tarball (the CLI's ``--from FILE``); without it the
    official one (or ``url``) is downloaded into ``home``. A finished folder is
    returned untouched, so calling this before every run costs nothing.
    """
    if name not in _SPECS:
        raise ImgclfError(f"unknown CIFAR dataset {name!r}; expected one of: {', '.join(CIFAR_NAMES)}")
    spec = _SPECS[name]
    home = datasets_dir() if home is None else home
    target = home / name
    if (target / COMPLETE_MARKER).exists():
        return target
    expected = (md5 or spec.md5).lower()
    _make_dir(home)
    if archive is None:
        archive, actual = _download(url or spec.url, home / spec.filename, expected, home / f"{name}.tar.gz.part")
    else:
        if not archive.is_file():
            raise ImgclfError(f"--from {archive}: no such file; pass the path of {spec.filename}")
        actual = _md5(archive)
        if actual != expected:
            log.warning(f"warning: {archive} is not the official archive (md5 {actual}, expected {expected}); "
                        "using it anyway")
    _extract(spec, archive, actual, target)
    return target


def _make_dir(path: Path) -> None:
    """Create ``path``, turning a permission or disk problem into an ImgclfError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ImgclfError(f"cannot create {path} ({reason}); set IMGCLF_HOME to a writable folder") from exc


def _md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks so a 170 MB archive needs no memory."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected: str, part: Path) -> tuple[Path, str]:
    """Fetch ``url`` to ``dest`` unless a verified copy is there; return it and its md5.

    The data goes to ``part`` first and is renamed only once its md5 matches,
    so ``dest`` is never a truncated or tampered file.
    """
    if dest.is_file() and _md5(dest) == expected:
        return dest, expected
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            length = response.headers.get("Content-Length")
            with progress_bar(transient=True) as bar:
                task = bar.add_task(f"downloading {dest.name} (MiB)", total=int(length) / _CHUNK if length else None)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk) / _CHUNK)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ImgclfError(
            f"could not download {url} ({reason}); download it elsewhere and pass it with --from FILE"
        ) from exc
    actual = digest.hexdigest()
    if actual != expected:
        part.unlink()
        raise ImgclfError(
            f"download of {url} has md5 {actual}, expected {expected}; retry, or download it "
            "elsewhere and pass it with --from FILE"
        )
    os.replace(part, dest)
    return dest, actual


def _extract(spec: _Spec, archive: Path, archive_md5: str, target: Path) -> None:
    """Write the archive's images into a temp folder, then rename it to ``target``.

    The marker is written last and the rename is atomic, so an interrupted run
    leaves no folder that looks finished; the next run simply starts over.
    """
    names, splits = _read_archive(spec, archive)
    total = sum(len(labels) for batches in splits.values() for _, labels in batches)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(target.parent.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide a shared dataset
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"writing {target.name} images", total=total)
            for split, batches in splits.items():
                for class_name in names:
                    (tmp / split / class_name).mkdir(parents=True)
                index = 0
                for images, labels in batches:
                    for image, label in zip(images, labels):
                        Image.fromarray(image).save(tmp / split / names[label] / f"{index:05d}.png", compress_level=1)
                        index += 1
                    bar.advance(task, len(labels))
        (tmp / COMPLETE_MARKER).write_text(archive_md5 + "\n")
        if target.exists():  # an older folder without marker: ours to replace
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        raise ImgclfError(
            f"could not write {target} ({exc}); free some disk space or set IMGCLF_HOME elsewhere"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_archive(spec: _Spec, archive: Path) -> tuple[list[str], dict[str, list[Batch]]]:
    """Class names and per-split batches, validated before anything is written.

    Members are read in one pass in archive order, since seeking back in a
    gzip stream means decompressing it again.
    """
    wanted = {f"{spec.folder}/{member}" for member in (*spec.train, *spec.test, spec.meta)}
    loaded: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]  # a file member (isfile above) has a reader
                    loaded[member.name.rsplit("/", 1)[-1]] = _unpickle(data, f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ImgclfError(
            f"{archive} is not a readable tar.gz archive ({exc}); expected {spec.filename} from {spec.url}"
        ) from exc
    missing = [m for m in (*spec.train, *spec.test, spec.meta) if m not in loaded]
    if missing:
        lacking = ", ".join(f"{spec.folder}/{m}" for m in missing)
        raise ImgclfError(f"{archive} lacks {lacking}; expected {spec.filename} from {spec.url}")
    names = _class_names(loaded[spec.meta], f"{archive}:{spec.folder}/{spec.meta}", spec.names_key)
    splits = {
        split: [_batch(loaded[m], f"{archive}:{spec.folder}/{m}", spec.labels_key, len(names)) for m in members]
        for split, members in (("train", spec.train), ("test", spec.test))
    }
    return names, splits


def _unpickle(data: bytes, source: str) -> dict:
    """Load one member with the restricted unpickler; it must be a dict."""
    try:
        obj = _ArrayUnpickler(data, source).load()
    except ImgclfError:
        raise
    except Exception as exc:  # a corrupt pickle can fail in many ways
        raise ImgclfError(f"{source} is not a valid CIFAR pickle ({exc}); re-download the archive") from exc
    if not isinstance(obj, dict):
        raise ImgclfError(f"{source} holds a {type(obj).__name__}, expected a dict; re-download the archive")
    return obj


def _class_names(meta: dict, source: str, key: bytes) -> list[str]:
    """Decoded class names, checked to be safe single folder names."""
    raw = meta.get(key)
    if not isinstance(raw, list) or not raw or not all(isinstance(n, (bytes, str)) for n in raw):
        raise ImgclfError(f"{source} lacks a {key.decode()} list of class names; re-download the archive")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]
    for n in names:
        if n in ("", ".", "..") or "/" in n or "\\" in n or "\0" in n:
            raise ImgclfError(
                f"{source} has class name {n!r}, which is not a valid folder name; re-download the archive"
            )
    if len(set(names)) != len(names):
        raise ImgclfError(f"{source} repeats class names; re-download the archive")
    return names


def _batch(batch: dict, source: str, key: bytes, num_classes: int) -> Batch:
    """Images as N x 32 x 32 x 3 (the archive stores R, G, B planes) and labels."""
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ImgclfError(f"{source}: expected b'data' as a uint8 array of shape (N, {_PIXELS}), found {found}")
    try:
        labels = np.asarray(batch.get(key), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ImgclfError(f"{source}: expected {key!r} as a list of integers ({exc})") from exc
    if labels.shape != (len(data),):
        raise ImgclfError(f"{source}: expected {len(data)} {key!r}, found shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ImgclfError(f"{source}: {key!r} has values outside 0..{num_classes - 1}")
    images = np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
    return images, labels
