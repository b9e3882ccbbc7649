"""The probe stage done in seconds: embed once, cache, fit the head with scikit-learn.

A probe trains only the classifier on a frozen backbone, so the backbone's
output for an image never changes: computing it every epoch (with gradient
descent on top) wastes most of the probe's time and fits the head worse
than a convex solver does. Here the backbone embeds every training and
validation image once (no augmentation), the embeddings are cached on disk
(float16) under a key of model, weights, decoded images and preprocessing,
and a multinomial logistic regression is fitted with its regularisation
chosen on the validation split. Its coefficients become the weights of the
model's linear head, so the result is an ordinary model and bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf import paths
from imgclf.console import progress_bar
from imgclf.engines.device import autocast

REGULARISATION_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)  # sklearn's C: inverse L2 strength
DEFAULT_C = 0.3  # without a validation split to choose on


def supports_linear_probe(head: nn.Module) -> bool:
    """A plain ``nn.Linear`` head with a bias can take the fitted coefficients exactly."""
    return type(head) is nn.Linear and head.bias is not None


@torch.no_grad()
def embed(model: nn.Module, pixels: np.ndarray, rows: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
          device: torch.device, precision: str, batch_size: int, description: str = "Embedding") -> np.ndarray:
    """Pooled features (``forward_head(..., pre_logits=True)``) of ``pixels[rows]``, float32 (N, D)."""
    from imgclf.data.augment import augment_batch
    from imgclf.data.augment_presets import PRESETS

    was_training = model.training
    model.eval()
    outputs = []
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(rows))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(pixels[chunk])).to(device)
            images = augment_batch(batch, PRESETS["none"], torch.Generator(), mean, std)
            with autocast(device, precision):
                features = model.forward_head(model.forward_features(images), pre_logits=True)
            outputs.append(features.float().cpu().numpy())
            bar.advance(task, len(chunk))
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def cache_path(key_parts: dict[str, object]) -> Path:
    """Where the embeddings for ``key_parts`` (model, weights, images, preprocessing, rows) are stored."""
    key = hashlib.blake2b(json.dumps(key_parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()
    return paths.cache_dir() / "embeddings" / f"{key}.npy"


def cached(key_parts: dict[str, object], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Embeddings read from ``$IMGCLF_HOME/cache/embeddings/<key>.npy``, or computed and stored (float16)."""
    path = cache_path(key_parts)
    if path.exists():
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError):  # damaged: compute again and replace it
            path.unlink(missing_ok=True)
    vectors = compute().astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(partial, vectors, allow_pickle=False)
    os.replace(partial, path)
    return vectors.astype(np.float32)  # as a later run will read them: a fresh and a cached fit agree


@dataclass
class ProbeFit:
    weight: np.ndarray  # (classes, features), for the model's head
    bias: np.ndarray
    regularisation: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


def fit_linear_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
                    classes: int, balanced: bool = False) -> ProbeFit:
    """Multinomial logistic regression on standardised features, C chosen on validation accuracy.

    The standardisation is folded into the returned weights, so they apply
    to raw features exactly as the head will see them.
    """
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    centre = train_x.mean(axis=0)
    scale = train_x.std(axis=0) + 1e-6
    standard = (train_x - centre) / scale
    grid = REGULARISATION_GRID if val_x is not None and len(val_x) else (DEFAULT_C,)
    best: tuple[float, float, object] | None = None
    for regularisation in grid:
        solver = LogisticRegression(C=regularisation, max_iter=2000, class_weight="balanced" if balanced else None)
        solver.fit(standard, train_y)
        score = solver.score((val_x - centre) / scale, val_y) if len(grid) > 1 else solver.score(standard, train_y)
        if best is None or score > best[0]:
            best = (score, regularisation, solver)
    _, regularisation, solver = best  # type: ignore[misc]
    weight = np.zeros((classes, train_x.shape[1]))
    bias = np.full(classes, -1e4)  # a class absent from training can never be predicted
    fitted = solver.coef_ / scale  # type: ignore[attr-defined]
    intercept = solver.intercept_ - fitted @ centre  # type: ignore[attr-defined]
    present = solver.classes_  # type: ignore[attr-defined]
    if len(present) == 2:  # sklearn gives one row for two classes: logit of the second
        weight[present[1]], bias[present[1]] = fitted[0] / 2, intercept[0] / 2
        weight[present[0]], bias[present[0]] = -fitted[0] / 2, -intercept[0] / 2
    else:
        weight[present], bias[present] = fitted, intercept
    val_accuracy = None
    if val_x is not None and len(val_x):
        val_accuracy = float(np.mean((val_x @ weight.T + bias).argmax(axis=1) == val_y))
    train_accuracy = float(np.mean((train_x @ weight.T + bias).argmax(axis=1) == train_y))
    return ProbeFit(weight, bias, regularisation, train_accuracy, val_accuracy, time.perf_counter() - started)


def load_into_head(head: nn.Linear, fit: ProbeFit) -> None:
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(fit.bias).to(head.bias))


def weights_fingerprint(path: str | None) -> list[object] | None:
    """(path, size, mtime) of a weights file, so a changed file is a new cache key."""
    if not path:
        return None
    try:
        stat = Path(path).stat()
    except OSError:  # e.g. moved since training: a resumed run's weights live in its checkpoint
        return None
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def rows_digest(rows: np.ndarray) -> str:
    """A short digest of which rows (images) an embedding set covers."""
    return hashlib.blake2b(np.ascontiguousarray(rows, dtype=np.int64).tobytes(), digest_size=12).hexdigest()
