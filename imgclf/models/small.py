"""Our own small networks: the Keras tutorial CNN baseline and an airbench-style fast net.

Both follow timm's classifier convention (``forward_features``,
``forward_head(pre_logits=...)``, ``get_classifier``, ``reset_classifier``,
``num_features``, ``num_classes``) so the training engine, the head-swapping
of pretrained weights and embedding extraction treat them like any timm model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import ImgclfError

# airbench94 writes BatchNorm momentum as the weight of the *old* running
# statistics (0.6); torch's momentum is the weight of the new batch.
FASTNET_BATCHNORM_MOMENTUM = 1 - 0.6
# With the scale frozen at 1 the normalised activations are used as they are.
# airbench's eps of 1e-12 keeps them exactly unit-variance, but a channel that is
# (nearly) constant over a batch, as plain images give, is then scaled up to 1e6x
# forward and backward, and training ends in NaN within a few steps. 1e-3 changes
# a unit-variance channel by 0.05% and bounds that gain to about 30x.
FASTNET_BATCHNORM_EPS = 1e-3
WHITENING_KERNEL = 2
# Patches per chunk when estimating the patch covariance, so whitening from
# thousands of images never materialises every patch at once.
WHITENING_CHUNK_IMAGES = 256
# Eigenvalues of the patch covariance below this fraction of the largest are
# taken as zero: the patches do not vary in that direction, so it gets no filter.
WHITENING_RANK_TOLERANCE = 1e-6


class ClassifierNet(nn.Module, ABC):
    """The timm-style head API shared by our networks; subclasses build the layers."""

    num_classes: int
    num_features: int
    classifier: nn.Module

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling."""

    @abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from the feature map, or the embedding that feeds the classifier when ``pre_logits``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final layer, whose shape depends on the number of classes."""
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a fresh one for ``num_classes`` (0: no head, the embedding is returned)."""
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)

    @abstractmethod
    def _make_classifier(self, num_classes: int) -> nn.Module:
        """A fresh final layer for ``num_classes``; ``nn.Identity`` for 0, as in timm."""


class TutorialCNN(ClassifierNet):
    """The TensorFlow image-classification tutorial network, layer for layer.

    ``widths`` conv 3x3 ("same") + ReLU + 2x2 max-pool blocks, dropout after the
    last pool (where the tutorial puts ``Dropout(0.2)``), flatten, a ReLU dense
    layer of ``hidden`` units and the classifier. It is the baseline users
    coming from the tutorial know, with the same parameter count as the Keras
    model; rescaling is left to the data pipeline. Because it flattens instead
    of pooling globally, it is built for one ``image_size`` (int or (h, w)).
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        image_size: int | tuple[int, int] = 180,
        dropout: float = 0.0,
        widths: tuple[int, ...] = (16, 32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        layers: list[nn.Module] = []
        channels = in_chans
        for out_channels in widths:
            layers += [nn.Conv2d(channels, out_channels, 3, padding="same"), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out_channels
            # Keras' MaxPooling2D uses "valid" padding: odd sizes round down, as here.
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ImgclfError(
                f"tutorial-cnn needs images of at least {2 ** len(widths)} px for {len(widths)} pooling steps, "
                f"got image_size={image_size}; use a larger image size or fewer widths"
            )
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(channels * height * width, hidden)
        self.num_features = hidden
        self.reset_classifier(num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.relu(self.hidden(torch.flatten(self.dropout(x), 1)))
        return x if pre_logits else self.classifier(x)


class ScaledLinear(nn.Linear):
    """A linear layer whose output is multiplied by a fixed factor.

    airbench scales its logits by 1/9 instead of learning the scale: with
    BatchNorm scales frozen at 1 this sets the effective softmax temperature.
    Keeping the factor inside the classifier means a new head for another
    number of classes keeps it too.
    """

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


class IdentityInitConv(nn.Conv2d):
    """A conv whose first ``in_channels`` filters start as the identity (airbench's dirac init).

    The network then starts close to passing its input through, which is
    what lets airbench train from scratch in a few epochs; the bias, when
    there is one, starts at zero.
    """

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.dirac_(self.weight.data[: self.in_channels])


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: scale fixed at 1 (not trained), bias trained, fast-moving statistics."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=FASTNET_BATCHNORM_EPS, momentum=FASTNET_BATCHNORM_MOMENTUM)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv → max-pool → BatchNorm → GELU, then ``depth - 1`` × (conv → BatchNorm → GELU)."""

    def __init__(self, channels_in: int, channels_out: int, depth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            IdentityInitConv(channels_in if index == 0 else channels_out, channels_out, 3, padding="same", bias=False)
            for index in range(depth)
        )
        self.norms = nn.ModuleList(FrozenScaleBatchNorm(channels_out) for _ in range(depth))
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv(x)
            # A map already 1 px high or wide is left as it is, so small
            # inputs (8 px) still work while 32 px keeps airbench's geometry.
            if index == 0 and min(x.shape[-2:]) >= 2:
                x = F.max_pool2d(x, 2)
            x = self.activation(norm(x))
        return x


class FastNet(ClassifierNet):
    """A fast small-image network after Keller Jordan's airbench94.

    A 2x2 conv without padding whose filters can be set by patch whitening
    (:meth:`init_whitening`), GELU, one :class:`ConvGroup` per width, a global
    max-pool and a bias-free linear classifier scaled by ``logit_scale``.
    With the defaults at 32 px this is airbench94's network; the global pool
    (airbench: a 3x3 max-pool of the 3x3 map) makes any size of 8 px or more
    work, and ``in_chans`` may be 1. Every conv starts with airbench's
    identity init of its first ``in_channels`` filters.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        widths: tuple[int, ...] = (64, 256, 256),
        depth: int = 2,
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if depth < 1 or not widths:
            raise ImgclfError(f"fastnet needs depth >= 1 and at least one width, got depth={depth}, widths={widths}")
        # Each eigenvector is used with both signs so GELU keeps both halves of the signal.
        whitening_width = 2 * in_chans * WHITENING_KERNEL**2
        self.whiten = IdentityInitConv(in_chans, whitening_width, WHITENING_KERNEL, padding=0, bias=True)
        groups = []
        channels = whitening_width
        for width in widths:
            groups.append(ConvGroup(channels, width, depth))
            channels = width
        self.groups = nn.Sequential(*groups)
        self.logit_scale = logit_scale
        self.num_features = channels
        self.reset_classifier(num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return ScaledLinear(self.num_features, num_classes, self.logit_scale) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(F.gelu(self.whiten(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to whiten 2x2 patches of ``images`` and freeze its weights.

        ``images`` are normalised training images (N, C, H, W), float; airbench
        uses 5,000. The filters are the eigenvectors of the patches' second
        moment matrix (≈ covariance, as normalised images are centred) divided
        by sqrt(eigenvalue + eps), strongest first, followed by their
        negatives; ``eps`` keeps flat directions from amplifying noise, and a
        direction the patches do not span at all (plain images) gets no filter. The
        weights are then frozen (only the bias trains), as in airbench.
        """
        weight = self.whiten.weight
        if images.ndim != 4 or images.shape[1] != weight.shape[1] or min(images.shape[-2:]) < WHITENING_KERNEL:
            raise ImgclfError(
                f"fastnet whitening needs images shaped (N, {weight.shape[1]}, H, W) with H, W >= {WHITENING_KERNEL}, "
                f"got {tuple(images.shape)}; pass a batch of normalised training images"
            )
        eigenvalues, eigenvectors = torch.linalg.eigh(patch_second_moment(images, WHITENING_KERNEL))
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
        # Directions the patches do not span (plain images: a rank of about 3 of 12) hold only rounding
        # noise; scaled up and then normalised by BatchNorm, that noise explodes the gradients.
        filters[eigenvalues <= WHITENING_RANK_TOLERANCE * eigenvalues[0].clamp_min(0)] = 0
        filters = filters.reshape(-1, *weight.shape[1:]).to(weight)
        weight.copy_(torch.cat((filters, -filters)))
        weight.requires_grad_(False)


def patch_second_moment(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Mean of p pᵀ over every kernel x kernel patch p (flattened channel, row, column like conv weights), float64.

    Kept in float64 so the eigenvalues of directions the patches do not span come out as (near) zero.
    """
    size = images.shape[1] * kernel * kernel
    total = torch.zeros(size, size, dtype=torch.float64, device=images.device)
    count = 0
    for chunk in images.split(WHITENING_CHUNK_IMAGES):
        patches = F.unfold(chunk.float(), kernel).transpose(1, 2).reshape(-1, size)
        total += (patches.T @ patches).double()
        count += patches.shape[0]
    return total / count
