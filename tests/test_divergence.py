"""Plain images and diverged runs: safe whitening, a one-line stop at the first non-finite loss, no bundle from it."""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models.folding import inference_copy


def test_a_model_with_non_finite_outputs_is_copied_for_inference_without_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    copied = inference_copy(model, torch.zeros(2, 3, 8, 8))
    assert not torch.isfinite(copied(torch.zeros(1, 3, 8, 8))).any()
