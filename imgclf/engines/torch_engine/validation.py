"""Logits of a whole split from the shipped model (the validation scores of every epoch), split across ranks.

Each rank predicts its contiguous share of the split and every rank gets
all of them, so every rank sees the same scores. Two shortcuts cost
seconds instead of a pass over the images: a tail stage's kept activations
through the tail, and a linear probe's cached embeddings through the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf import distributed
from imgclf.data.augment_presets import PRESETS
from imgclf.data.batches import BatchLoader
from imgclf.data.views import PLAIN
from imgclf.engines.contract import Stage, score_logits
from imgclf.engines.history import history_row
from imgclf.models.device import autocast

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine


@torch.no_grad()
def predict_logits(engine: TorchEngine, split: str, tta: bool = False) -> torch.Tensor:
    """Logits for every row of ``split`` (no augmentation; flip-averaged with ``tta``)."""
    model = engine.evaluated_model()
    if not tta and engine.tail is not None and engine.ema is None and engine.tail.has(split):
        return engine.tail.logits(split)  # the frozen part never changes: its kept activations through the tail
    if not tta and engine.probe.backbone_is_embedder():
        # the backbone never changed: its cached embeddings through the head are these logits, in seconds
        head = model.get_classifier()  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it
        features = embed_split(engine, split)
        return head(torch.from_numpy(features).to(head.weight)).float().cpu()
    model.eval()
    data = engine.data
    rows, targets = my_share(engine, split)
    assert engine.config.batch_size is not None  # resolved by the recipe before training
    loader = BatchLoader(data.pixels, rows, targets, 2 * engine.config.batch_size, PRESETS["none"], data.mean,
                         data.std, shuffle=False, device=engine.device)
    outputs = [torch.empty(0, len(data.classes))]
    for images, _ in loader:
        with autocast(engine.device, engine.precision):
            logits = model(images).float()
            if tta:
                logits = 0.5 * (logits + model(images.flip(3)).float())
        outputs.append(logits.cpu())
    return torch.cat(distributed.gather_in_rank_order(torch.cat(outputs)))


def my_share(engine: TorchEngine, split: str) -> tuple[np.ndarray, torch.Tensor]:
    """This rank's contiguous share of ``split``'s rows and targets (all of them in one process)."""
    data = engine.data
    mine = engine.world.share(len(data.rows[split]))
    return data.rows[split][mine.start:mine.stop], data.split_targets(split)[mine.start:mine.stop]


def embed_split(engine: TorchEngine, split: str, view: str = PLAIN) -> np.ndarray:
    """The backbone's embeddings of ``split`` (in ``view``): each rank embeds its share, every rank gets them all."""
    rows, _ = my_share(engine, split)
    embedder = engine.probe.embedder()
    data = engine.data
    description = f"Embedding {split}" + ("" if view == PLAIN else f" ({view})")
    mine = (embedder.embed_decoded(data.pixels, rows, data.paths, description=description, view=view)
            if len(rows) else np.empty((0, embedder.dim), dtype=np.float32))  # a split smaller than the world
    return np.concatenate(distributed.gather_in_rank_order(mine))


def epoch_row(engine: TorchEngine, stage: Stage, train_loss: float, train_accuracy: float, lr: float,
              seconds: float, images: int) -> dict[str, Any]:
    """One line of metrics.csv (the validation scores measured now) for the epoch at ``engine.progress``."""
    scores: dict[str, Any] = {"loss": None, "accuracy": None}
    if engine.has_val:
        scores = score_logits(predict_logits(engine, "val"), engine.data.split_targets("val"),
                              engine.data.multilabel)
    return history_row(engine.progress.epoch + 1, stage.name, train_loss, train_accuracy, scores["loss"],
                       scores["accuracy"], lr, seconds, images)
