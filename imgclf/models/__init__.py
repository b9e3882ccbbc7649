"""Models: one registry of names (ours and timm's), our small networks, and pretrained weights."""

from imgclf.models.pretrained import PretrainedWeights, load_pretrained, pretrained_source
from imgclf.models.registry import (
    ModelInfo,
    create_model,
    default_normalisation,
    list_models,
    model_info,
    model_names,
    suggest,
)
from imgclf.models.small import FastNet, TutorialCNN

__all__ = [
    "FastNet",
    "ModelInfo",
    "PretrainedWeights",
    "TutorialCNN",
    "create_model",
    "default_normalisation",
    "list_models",
    "load_pretrained",
    "model_info",
    "model_names",
    "pretrained_source",
    "suggest",
]
