"""The probe stage as one logistic-regression fit on cached embeddings: an epoch without steps.

Where the backbone has known pretrained weights and a linear head, the
probe stage does not descend gradients: the frozen backbone embeds train
(and val) once, through the embedding cache that ``imgclf embed`` shares,
and :mod:`imgclf.engines.linear_probe` fits the head. With TTA, the
single-label probe trains on the views the model is judged on as well.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf import distributed
from imgclf.data.views import PLAIN, image_views
from imgclf.embeddings.embedder import Embedder, Preprocessing, embedding_identity
from imgclf.engines.contract import score_logits
from imgclf.engines.linear_probe import CV_FOLDS, ProbeFit, fit_label_heads, fit_linear_head, load_into_head
from imgclf.engines.torch_engine.validation import embed_split, epoch_row

if TYPE_CHECKING:
    from imgclf.engines.torch_engine.engine import TorchEngine

log = logging.getLogger(__name__)


class LinearProbe:
    """The frozen backbone as an embedder, and the probe stage fitted on its embeddings."""

    def __init__(self, engine: TorchEngine, weights: str | None, usable: bool) -> None:
        self.engine = engine
        self.weights = weights  # the pretrained weights' name, which (with the model) keys the embedding cache
        self.used = usable and weights is not None  # the probe stage is this fit (else gradient descent)
        self._embedder: Embedder | None = None

    def splits(self) -> list[str]:
        return ["train"] + (["val"] if self.engine.has_val else [])

    def _preprocessing(self) -> Preprocessing:
        config, data = self.engine.config, self.engine.data
        return Preprocessing(config.image_size or 0, config.resize or "squash", 1 if config.grayscale else 3,
                             data.mean, data.std)

    def embedder(self) -> Embedder:
        """The frozen backbone as an embedder (made once, before any training changes the weights)."""
        if self._embedder is None:
            engine, config = self.engine, self.engine.config
            self._embedder = Embedder(engine.model, config.model or "", self.weights or "", self._preprocessing(),
                                      config.model or "", config.model_args, engine.device, engine.precision,
                                      batch_size=2 * (config.batch_size or 32))
        return self._embedder

    def frozen_identity(self) -> dict[str, Any] | None:
        """What the pretrained backbone's outputs depend on (the embedder's cache key), None without known weights."""
        if self.weights is None:
            return None
        config = self.engine.config
        return embedding_identity(config.model or "", config.model_args, self.weights, self._preprocessing(),
                                  self.engine.precision)

    def backbone_is_embedder(self) -> bool:
        """Whether the whole run is one linear probe, so the trained backbone is exactly the embedder's."""
        return self.used and all(stage.trainable == "head" for stage in self.engine.stages)

    def embeddings_cached(self) -> bool:
        """Whether the probe will find every embedding it needs on disk (it then costs seconds)."""
        from imgclf.embeddings.store import image_key

        data = self.engine.data
        keys = [image_key(data.paths[row]) for split in self.splits() for row in data.rows[split]]
        return bool(self.embedder().store.get(keys)[1].all())

    def train_views(self) -> list[str]:
        """The views of each training image the probe (and the tail) train on: TTA's views, single-label data only."""
        config = self.engine.config
        return [PLAIN] if self.engine.data.multilabel else image_views(bool(config.tta), config.tta_zoom or 0.0)

    def features(self, split: str, view: str = PLAIN) -> np.ndarray:
        """The probe's embeddings: from the tail's activation pass when a tail follows (one pass for both).

        A tail started from a bundle's weights (``engine.warm_pretrained``)
        gives its own features, which the kept pretrained ones are not.
        """
        tail = self.engine.tail
        if tail is None:
            return embed_split(self.engine, split, view)
        return tail.tuned_features(split, view) if self.engine.warm_pretrained else tail.features(split, view)

    def fit(self) -> dict[str, Any]:
        """Fit the head on the embeddings (rank 0 fits, every rank loads its weights); the stage's history row."""
        engine = self.engine
        started = engine.now()
        features = {split: self.features(split) for split in self.splits()}
        labels = {split: engine.data.split_targets(split).numpy() for split in self.splits()}
        # with TTA the model is judged on its views (mirror, zoom) too, so a single-label probe trains on them as well
        train_views = [features["train"]] + [self.features("train", view) for view in self.train_views()[1:]]
        probe = self._fitted(train_views, features, labels) if engine.world.is_main else None
        probe = distributed.broadcast_from_main(probe)
        assert probe is not None
        load_into_head(engine.head, probe)
        engine.config = replace(engine.config, probe_c=probe.regularisation)  # kept: an update refits with it
        if engine.ema is not None:
            engine.ema.load_state_dict(engine.model.state_dict())
        train_logits = torch.from_numpy(features["train"] @ probe.weight.T + probe.bias).float()
        seconds = engine.now() - started
        train_loss = score_logits(train_logits, torch.from_numpy(labels["train"]), engine.data.multilabel)["loss"]
        row = epoch_row(engine, engine.stages[engine.progress.stage], train_loss, probe.train_accuracy, 0.0, seconds,
                        len(engine.data.rows["train"]))
        chosen_by = "--probe-c" if engine.config.probe_c is not None else \
            "validation mAP" if engine.data.multilabel else f"{CV_FOLDS}-fold cross-validation"
        source = "embeddings from the tail's activation pass" if engine.tail is not None else "cached embeddings"
        log.info("probe: logistic regression on %s (%d view(s) of train), C=%g by %s, fitted in %.1f s", source,
                 len(train_views), probe.regularisation, chosen_by, probe.seconds)
        return row

    def _fitted(self, train_views: list[np.ndarray], features: dict[str, np.ndarray],
                labels: dict[str, np.ndarray]) -> ProbeFit:
        config, data = self.engine.config, self.engine.data
        balanced = config.class_weights == "auto"
        if data.multilabel:
            return fit_label_heads(features["train"], labels["train"], features.get("val"), labels.get("val"),
                                   balanced=balanced, regularisation=config.probe_c)
        return fit_linear_head(train_views, labels["train"], features.get("val"), labels.get("val"),
                               len(data.classes), balanced=balanced, seed=config.seed,
                               regularisation=config.probe_c)
