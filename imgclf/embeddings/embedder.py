"""Turn images into embeddings: a backbone's pooled features, cached per image.

An :class:`Embedder` is a model (a registry backbone with pretrained
weights, or a trained bundle) plus the exact preprocessing its features
depend on. It runs an inference copy of the model (BatchNorm folded,
channels_last, bf16 where the CPU has it) and looks every image up in the
:class:`~imgclf.embeddings.store.EmbeddingStore` first, so the forward pass
is paid once per image whichever command asks: ``embed``, a probe in
``train``, ``similar``, ``index``, ``match`` or ``inspect --near-duplicates``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.console import progress_bar
from imgclf.data.decode import ResizePolicy
from imgclf.data.views import PLAIN, view_of
from imgclf.embeddings.store import EmbeddingStore, image_key
from imgclf.errors import ImgclfError
from imgclf.models.device import autocast, choose_device, choose_precision
from imgclf.models.folding import inference_copy

SAVE_EVERY = 1024  # images embedded between writes to the store, so an interrupted run keeps its work


@dataclass(frozen=True)
class Preprocessing:
    """Everything between an image file and the tensor the model sees."""

    image_size: int
    resize: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class FileEmbeddings:
    """Embeddings of a list of files: unit rows where an error is empty, zero rows where a file failed."""

    paths: list[Path]
    vectors: np.ndarray  # float32 (N, D)
    errors: list[str]
    reused: int
    computed: int
    seconds: float

    @property
    def ok(self) -> np.ndarray:
        return np.array([not error for error in self.errors], dtype=bool)


def embedding_identity(architecture: str, model_args: dict[str, Any], weights: str, preprocessing: Preprocessing,
                       precision: str, view: str = PLAIN) -> dict[str, Any]:
    """What an embedding depends on, as stored next to it; equal identities share one cache.

    The plain view adds no field, so caches written before views existed stay valid.
    """
    identity = {"architecture": architecture, "model_args": model_args, "weights": weights,
                **asdict(preprocessing), "precision": precision}
    return identity if view == PLAIN else {**identity, "view": view}


class Embedder:
    """A model's pooled features (``forward_head(..., pre_logits=True)``) for images, with a disk cache."""

    def __init__(self, model: nn.Module, reference: str, weights: str, preprocessing: Preprocessing,
                 architecture: str, model_args: dict[str, Any] | None = None, device: str | torch.device = "auto",
                 precision: str = "auto", batch_size: int = 64) -> None:
        self.reference = reference
        self.preprocessing = preprocessing
        self.device = device if isinstance(device, torch.device) else choose_device(device)
        self.precision = choose_precision(precision, self.device) if precision == "auto" else precision
        self.batch_size = batch_size
        self.identity = embedding_identity(architecture, model_args or {}, weights, preprocessing, self.precision)
        self.store = EmbeddingStore(self.identity)
        self._view_stores = {PLAIN: self.store}
        self._identity_args = (architecture, model_args or {}, weights, preprocessing, self.precision)
        size = preprocessing.image_size
        example = torch.zeros(1, preprocessing.channels, size, size).contiguous(memory_format=torch.channels_last)
        self.model = inference_copy(model.to(self.device), example.to(self.device))
        self.dim = int(self._forward(example.to(self.device)).shape[1])

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, model: str | Path, weights: str | Path | None = None, device: str = "auto",
             precision: str = "auto", image_size: int | None = None) -> Embedder:
        """From a trained model (run directory or bundle folder) or a registry backbone with pretrained weights."""
        from imgclf.deploy.bundle import MODEL_FILE

        if image_size is not None and image_size < 8:
            raise ImgclfError(f"--image-size {image_size} is too small; give at least 8 pixels (224 is usual)")
        candidate = Path(model)
        if (candidate / MODEL_FILE).is_file() or (candidate / "model" / MODEL_FILE).is_file():
            return cls._from_bundle(candidate, device, precision, image_size)
        return cls._from_backbone(str(model), weights, device, precision, image_size)

    @classmethod
    def _from_bundle(cls, path: Path, device: str, precision: str, image_size: int | None) -> Embedder:
        from imgclf.backends import RECORDS
        from imgclf.deploy.bundle import WEIGHTS_FILE, find_bundle, read_bundle_info
        from imgclf.deploy.runtime import TorchRuntime

        directory = find_bundle(path)
        info = read_bundle_info(directory)
        if info.backend not in RECORDS or not RECORDS[info.backend].embeddings:
            raise ImgclfError(f"{directory} is a {info.backend} model; embeddings come from torch models "
                              "(a registry backbone or a model trained with the torch backend)")
        if image_size not in (None, info.image_size):
            raise ImgclfError(f"{path} was trained at {info.image_size} px and embeds at that size; "
                              "leave out --image-size")
        runtime = TorchRuntime.load(directory, info, device=device, precision=precision)
        digest = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
        preprocessing = Preprocessing(info.image_size, info.resize, info.channels, tuple(info.mean), tuple(info.std))
        return cls(runtime.model, str(directory.resolve()), f"sha256:{digest}", preprocessing,
                   info.architecture, info.model_args, runtime.device, runtime.precision)

    @classmethod
    def _from_backbone(cls, name: str, weights: str | Path | None, device: str, precision: str,
                       image_size: int | None) -> Embedder:
        from imgclf.models import create_model, load_pretrained, pretrained_source
        from imgclf.models.pretrained import weights_fingerprint
        from imgclf.recipes import PRETRAINED_IMAGE_SIZE

        size = image_size or PRETRAINED_IMAGE_SIZE
        backbone = create_model(name, 0, image_size=size)
        loaded = load_pretrained(backbone, name, Path(weights) if weights else None)
        fingerprint = weights_fingerprint(str(weights)) if weights else None
        identity_of_weights = str(fingerprint or pretrained_source(name) or loaded.source)
        preprocessing = Preprocessing(size, "crop", 3, loaded.mean, loaded.std)
        return cls(backbone, name, identity_of_weights, preprocessing, name, {}, device, precision)

    # ----------------------------------------------------------------- embedding
    @torch.inference_mode()
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            features = self.model.forward_features(images)  # type: ignore[operator]  # a timm model's methods:
            return self.model.forward_head(features, pre_logits=True).float()  # type: ignore[operator]  # nn.Module's hint lacks them

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, D) for decoded uint8 images (N, H, W, C) at the model's input size; no cache.

        Values are rounded to float16, as the store keeps them, so a fresh
        and a cached embedding of an image are the same numbers.
        """
        from imgclf.data.augment import augment_batch
        from imgclf.data.augment_presets import PRESETS

        mean, std = self.preprocessing.mean, self.preprocessing.std
        outputs = []
        for start in range(0, len(pixels), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + self.batch_size])).to(self.device)
            images = augment_batch(batch, PRESETS["none"], torch.Generator(), mean, std)
            outputs.append(self._forward(images).cpu().numpy().astype(np.float16).astype(np.float32))
        return np.concatenate(outputs) if outputs else np.zeros((0, self.dim), dtype=np.float32)

    def store_for(self, view: str = PLAIN) -> EmbeddingStore:
        """The cache of one view: each view of each model identity has its own."""
        if view not in self._view_stores:
            view_of(np.zeros((0, 1, 1, 1), dtype=np.uint8), view)  # an unknown view fails here, not at first use
            self._view_stores[view] = EmbeddingStore(embedding_identity(*self._identity_args, view=view))
        return self._view_stores[view]

    def embed_decoded(self, pixels: np.ndarray, rows: np.ndarray, paths: Sequence[Path],
                      description: str = "Embedding", view: str = PLAIN) -> np.ndarray:
        """float32 (len(rows), D) for rows of an already decoded dataset; ``paths[i]`` is row i's file."""
        keys = [image_key(Path(paths[row])) for row in rows]
        store = self.store_for(view)
        vectors, found = store.get(keys)
        missing = np.flatnonzero(~found)
        if len(missing):
            computed = self._embed_in_chunks(missing, lambda chunk: view_of(pixels[rows[chunk]], view), keys,
                                             description, store)
            vectors = computed if vectors is None else vectors
            vectors[missing] = computed[missing]
        return vectors  # type: ignore[return-value]  # the store had every row, or they were computed

    def embed_files(self, paths: Sequence[Path], description: str = "Embedding", workers: int | None = None,
                    progress: bool = True) -> FileEmbeddings:
        """Embeddings of image files, read from the store where present; unreadable files get an error.

        ``progress=False`` shows no bar, for callers that draw their own.
        """
        from imgclf.deploy.predict import decoded_batches

        started = time.perf_counter()
        paths = [Path(path) for path in paths]
        keys = [image_key(path) for path in paths]
        vectors, found = self.store.get(keys)
        if vectors is None:
            vectors = np.zeros((len(paths), self.dim), dtype=np.float32)
        errors = ["" if hit else "not embedded" for hit in found]
        missing = [index for index in range(len(paths)) if not found[index]]
        size = (self.preprocessing.image_size,) * 2
        pending_keys: list[str] = []
        pending_vectors: list[np.ndarray] = []
        with progress_bar(transient=not missing, disable=not progress) as bar:  # nothing to compute: no bar left behind
            task = bar.add_task(description, total=len(missing), visible=bool(missing))
            batches = decoded_batches([paths[index] for index in missing], size, self._resize(),
                                      self.preprocessing.channels == 1, self.batch_size, workers)
            position = 0
            for chunk, pixels, chunk_errors in batches:
                indices = missing[position:position + len(chunk)]
                position += len(chunk)
                good = [offset for offset, error in enumerate(chunk_errors) if not error]
                embedded = self.embed_pixels(pixels[good]) if good else None
                for offset, error in enumerate(chunk_errors):
                    errors[indices[offset]] = error
                for row, offset in enumerate(good):
                    vectors[indices[offset]] = embedded[row]  # type: ignore[index]  # good rows: embedded
                    key = keys[indices[offset]]
                    if key is not None:
                        pending_keys.append(key)
                        pending_vectors.append(embedded[row])  # type: ignore[index]  # as above
                if len(pending_keys) >= SAVE_EVERY:
                    self.store.put(pending_keys, np.stack(pending_vectors))
                    pending_keys, pending_vectors = [], []
                bar.advance(task, len(chunk))
        if pending_keys:
            self.store.put(pending_keys, np.stack(pending_vectors))
        return FileEmbeddings(paths, vectors, errors, int(found.sum()), len(missing), time.perf_counter() - started)

    def _embed_in_chunks(self, indices: np.ndarray, pixels_of: Any, keys: Sequence[str | None],
                         description: str, store: EmbeddingStore) -> np.ndarray:
        """Embed ``indices`` (positions into ``keys``), saving to the store every SAVE_EVERY images."""
        vectors: np.ndarray | None = None
        with progress_bar() as bar:
            task = bar.add_task(description, total=len(indices))
            for start in range(0, len(indices), SAVE_EVERY):
                chunk = indices[start:start + SAVE_EVERY]
                embedded = self.embed_pixels(pixels_of(chunk))
                if vectors is None:
                    vectors = np.zeros((len(keys), embedded.shape[1]), dtype=np.float32)
                vectors[chunk] = embedded
                stored = [(keys[index], row) for row, index in enumerate(chunk) if keys[index] is not None]
                if stored:
                    store.put([key for key, _ in stored], embedded[[row for _, row in stored]])
                bar.advance(task, len(chunk))
        return vectors  # type: ignore[return-value]  # callers pass at least one index

    def _resize(self) -> ResizePolicy:
        resize = self.preprocessing.resize
        if resize not in ("squash", "crop", "pad"):
            raise ImgclfError(f"{self.reference}: unknown resize policy {resize!r} in the model description")
        return resize  # type: ignore[return-value]  # one of the policies (checked above)
