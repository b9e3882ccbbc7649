"""Several pretrained trunks side by side under one linear head: one model, one bundle, one export.

On photos, the pooled features of two EfficientNet-Lite trunks concatenated
and fitted with one probe beat either trunk alone (flowers; evidence:
``benchmarks/results/transfer.json``, ``views``): the trunks saw ImageNet at
different depths and resolutions and make different mistakes. Keeping them
in one ``nn.Module`` (rather than an ensemble of bundles) means training,
the embedding cache, predict, serve and every export see an ordinary model
with timm's interface (``forward_features``, ``forward_head``,
``get_classifier``).

A stack is named by its trunks joined with ``+``
(``tf_efficientnet_lite0+tf_efficientnet_lite1``); every trunk sees the same
input image.
"""

from __future__ import annotations

import torch
from torch import nn

STACK_SEPARATOR = "+"


def stack_parts(name: str) -> list[str]:
    """The trunk names of a stack name; a plain model name is its own single part."""
    return name.split(STACK_SEPARATOR)


def is_stack(name: str) -> bool:
    return len(stack_parts(name)) > 1


class TrunkStack(nn.Module):
    """Trunks built without heads (``num_classes=0``); their pooled features concatenated feed one ``nn.Linear``."""

    def __init__(self, trunks: list[nn.Module], num_classes: int) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(trunks)
        widths = [int(trunk.num_features) for trunk in trunks]  # type: ignore[arg-type]  # timm trunks' widths
        self.num_features = sum(widths)
        self.classifier: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, sum of the trunks' widths): each trunk's pooled features, in trunk order."""
        return torch.cat([trunk.forward_head(trunk.forward_features(images), pre_logits=True)  # type: ignore[operator]  # timm trunks
                          for trunk in self.trunks], dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.classifier(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return self.classifier
