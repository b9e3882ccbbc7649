"""How unlike the training images is a photo? The novelty score, from the pooled features the log records.

**The score: the negative maximum logit** (Hendrycks et al. 2022, "Scaling
out-of-distribution detection for real-world settings"): the model's own
classification head applied to the pooled features (stored in the
reference, so a logged embedding is scored without the model), its largest
logit negated, so a higher score is more novel. A photo is novel when its
score is beyond the 99th percentile of val's scores (:mod:`imgclf.watch.reference`),
so about 1% of photos like the training ones are flagged, by construction.

Why this score: the first version scored an image by its cosine distance to
the nearest training embedding, and on the flowers benchmark (a four-class
model, sunflowers never seen, mixed into a stream of val photos at 10%) it
flagged 0.9% of sunflowers, as many as of known photos. A fine-tuned model
pulls its training photos together in feature space, and a new class that
resembles known ones lands among them; what does tell it apart is that no
class's evidence is strong. Measured on that benchmark (AUROC sunflowers
against known photos; recall and known photos flagged at val's 99th
percentile), the feature-space scores (nearest and 10th-nearest training
neighbour on unit features, Sun et al. 2022; nearest val neighbour;
class-conditional and relative Mahalanobis with a Ledoit-Wolf covariance,
Lee et al. 2018, Ren et al. 2021) reached AUROC 0.49-0.73 and recall at
most 2%; the confidence scores 0.87 (maximum softmax, Hendrycks and Gimpel
2017: recall 12% with 2.1% of known photos flagged; energy, Liu et al.
2020: 8% at 1.2%; maximum logit: 9% at 1.1%), and the mean or the larger
of a feature score's and a confidence score's val percentiles did worse
than the confidence score alone (AUROC 0.83-0.85, recall under 4%).
The maximum logit had the best AUROC and kept known photos flagged nearest
the nominal 1%; it needs no temperature and no training sample. The figures:
``novelty_scores`` in ``benchmarks/results/monitor.json``.

What it does not do: a class that looks like a known one is still hard
(recall near 10% at 1% false positives on sunflowers against daisies and
dandelions; at a tenth of the stream too few for a window's novelty
alarm); the flagged images reach the review queue, where a person sees them.

A model whose head is not one linear layer, and a bundle whose reference
was written before this score, use the nearest-training-distance score
(:class:`NearestDistance`) with the threshold stored for it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

MAX_LOGIT = "max-logit"
NEAREST = "nearest-distance"
DESCRIPTIONS = {MAX_LOGIT: "the negative largest logit of the model's head", NEAREST: "the cosine distance to the "
                "nearest training embedding"}  # for the report


class NoveltyScore(Protocol):
    kind: str

    def __call__(self, embeddings: np.ndarray) -> np.ndarray: ...


class MaxLogit:
    """The negative largest logit of a linear head ``embeddings @ weight.T + bias``: higher is more novel."""

    kind = MAX_LOGIT

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        logits = np.asarray(embeddings, dtype=np.float32) @ self.weight.T + self.bias
        return (-logits.max(axis=1)).astype(np.float32)


class NearestDistance:
    """Cosine distance of each embedding to the nearest of the training sample (unit rows): the first score."""

    kind = NEAREST

    def __init__(self, train: np.ndarray) -> None:
        self.train = train

    def __call__(self, embeddings: np.ndarray, chunk: int = 1024) -> np.ndarray:
        queries = unit_rows(embeddings)
        if not len(queries):
            return np.zeros(0, dtype=np.float32)
        best = [1.0 - (queries[start:start + chunk] @ self.train.T).max(axis=1)
                for start in range(0, len(queries), chunk)]
        return np.maximum(np.concatenate(best), 0.0).astype(np.float32)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    rows = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def linear_head(model: Any, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight, bias) of a torch model's classification head when it is one linear layer on ``dim`` features."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear) or head.in_features != dim:
        return None
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    return head.weight.detach().float().cpu().numpy(), bias.detach().float().cpu().numpy()
