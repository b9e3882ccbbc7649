"""Augment whole batches of uint8 images as tensors, on the CPU or the GPU, seeded.

Per-image Python transforms (the torchvision/Keras way) are what make
CPU input pipelines slow. Here a batch goes through three batched steps:

1. **geometry** in uint8: a crop box per image (random resized crop, zoom
   and translation are all boxes) resized with an antialiased uint8 kernel,
   then flips; rotation, when asked for, uses one ``grid_sample`` for the
   whole batch with the same boxes expressed as affine matrices;
2. **colour and normalisation in one pass**: brightness, contrast,
   saturation and hue are all linear in RGB, so together with the
   mean/std normalisation they make one 3x3 matrix and bias per image;
3. **cutout**, then **mixup/cutmix** on the labels as well as the images.

Every random number comes from the ``torch.Generator`` passed in, so a seed
gives the same batch on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.data.augment_presets import AugmentConfig

# ITU-R BT.601 luma weights, as PIL and torchvision use for grayscale.
LUMA = (0.299, 0.587, 0.114)


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    hflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Augment and normalise a uint8 batch (N, H, W, C) into float32 (N, C, H, W), channels_last.

    ``mean`` and ``std`` are in 0..1 units, as timm and torchvision give them.
    The output has the same height and width as the input. ``hflip`` (one
    bool per image), when given, decides the horizontal flips instead of the
    generator: the loader's alternating flip knows each image's epoch.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a uint8 (N, H, W, C) batch, got {images.dtype} {tuple(images.shape)}")
    n, height, width, channels = images.shape
    params = _sample_geometry(n, height, width, config, generator)
    if hflip is not None:
        params["hflip"] = hflip.to(torch.bool) & config.hflip
    if config.rotation > 0:
        output = _warp_affine(images, params)
    elif config.reflect and config.translate > 0 and config.scale == (1.0, 1.0):
        output = _shift_reflect(images, params)
    else:
        output = _crop_resize(images, params) if config.geometric else images
        output = _flip(output, params["hflip"], params["vflip"], owned=config.geometric)
    output = _colour_normalise(output, config, generator, mean[:channels], std[:channels])
    if config.cutout > 0:
        _cutout(output, config.cutout, generator)
    return output.permute(0, 3, 1, 2)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _sample_geometry(n: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator) -> dict:
    """Per-image crop boxes (centre and size in pixels), flips and angles.

    Drawn even for settings that are off, so turning one augmentation on
    does not change the random numbers of the others.
    """
    area = _uniform(n, *config.scale, generator)
    log_ratio = _uniform(n, math.log(config.ratio[0]), math.log(config.ratio[1]), generator)
    if config.scale == (1.0, 1.0):
        log_ratio = torch.zeros(n)
    box_w = (area * log_ratio.exp()).sqrt().clamp(max=1.0) * width
    box_h = (area / log_ratio.exp()).sqrt().clamp(max=1.0) * height
    # centre anywhere that keeps the box inside, then shift by the translation
    centre_x = width / 2 + (torch.rand(n, generator=generator) - 0.5) * (width - box_w)
    centre_y = height / 2 + (torch.rand(n, generator=generator) - 0.5) * (height - box_h)
    centre_x += (torch.rand(n, generator=generator) * 2 - 1) * config.translate * width
    centre_y += (torch.rand(n, generator=generator) * 2 - 1) * config.translate * height
    hflip = (torch.rand(n, generator=generator) < 0.5) & config.hflip
    vflip = (torch.rand(n, generator=generator) < 0.5) & config.vflip
    angle = _uniform(n, -config.rotation, config.rotation, generator)
    return {"cx": centre_x, "cy": centre_y, "w": box_w, "h": box_h, "hflip": hflip, "vflip": vflip, "angle": angle}


def _crop_resize(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Cut each image's box and resize it back to full size, in uint8.

    A box the size of the image is a pure shift: the part inside the image
    is copied and the rest stays black (zero padding, as in the classic
    CIFAR pad-and-crop). Scaled boxes come from the random resized crop and
    are moved back inside the image before resizing.
    """
    n, height, width, _ = images.shape
    box_w = params["w"].round().long().clamp(1, width).tolist()
    box_h = params["h"].round().long().clamp(1, height).tolist()
    left = (params["cx"] - params["w"] / 2).round().long().tolist()
    top = (params["cy"] - params["h"] / 2).round().long().tolist()
    source = images.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last
    output = torch.zeros_like(images)
    target = output.permute(0, 3, 1, 2)
    # One kernel call per image: boxes differ in size and torch has no batched
    # variable-size crop-resize; in uint8 this beats one float grid_sample 2-3x.
    for index in range(n):
        x0, y0, w, h = left[index], top[index], box_w[index], box_h[index]
        if (h, w) == (height, width):
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
            if sx1 > sx0 and sy1 > sy0:
                target[index, :, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = source[index, :, sy0:sy1, sx0:sx1]
            continue
        x0, y0 = min(max(x0, 0), width - w), min(max(y0, 0), height - h)
        crop = source[index:index + 1, :, y0:y0 + h, x0:x0 + w]
        target[index] = F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True,
                                      align_corners=False)[0]
    return output


def _shift_reflect(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Shift every image by its box's offset in whole pixels, mirroring the image into the uncovered border.

    airbench's translate (reflect-pad, then a random crop of the original
    size), as one batched gather: output pixel (y, x) reads (y + dy, x + dx)
    reflected back into the image.
    """
    n, height, width, _ = images.shape
    dx = (params["cx"] - width / 2).round().long()
    dy = (params["cy"] - height / 2).round().long()
    cols = _reflect_index(torch.arange(width)[None, :] + dx[:, None], width)
    rows = _reflect_index(torch.arange(height)[None, :] + dy[:, None], height)
    device = images.device
    batch = torch.arange(n, device=device)[:, None, None]
    return images[batch, rows.to(device)[:, :, None], cols.to(device)[:, None, :]]


def _reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices mirrored into 0..size-1 without repeating the edge (numpy's and torch's "reflect")."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index < size, index, period - index)


def _flip(images: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, owned: bool) -> torch.Tensor:
    """Flip the chosen images of an (N, H, W, C) batch, copying only those.

    ``owned`` says the batch is a fresh tensor that may be changed in place;
    otherwise it is the caller's and is copied first.
    """
    for chosen, dim in ((hflip, 2), (vflip, 1)):
        if chosen.any():
            if not owned:
                images, owned = images.clone(), True
            rows = torch.nonzero(chosen).flatten().to(images.device)
            images[rows] = images[rows].flip(dim)
    return images


def _warp_affine(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Crop, rotate and flip every image with one bilinear ``grid_sample``."""
    n, height, width, _ = images.shape
    angle = params["angle"] * math.pi / 180
    scale_x = params["w"] / width * torch.where(params["hflip"], -1.0, 1.0)
    scale_y = params["h"] / height * torch.where(params["vflip"], -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * scale_x
    theta[:, 0, 1] = -sin * scale_y * height / width
    theta[:, 1, 0] = sin * scale_x * width / height
    theta[:, 1, 1] = cos * scale_y
    theta[:, 0, 2] = params["cx"] / width * 2 - 1
    theta[:, 1, 2] = params["cy"] / height * 2 - 1
    source = images.permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta.to(images.device), list(source.shape), align_corners=False)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _colour_normalise(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                      mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Colour jitter and normalisation as one per-image affine map on the channel vector."""
    n, _, _, channels = images.shape
    device = images.device
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    if not config.colour:
        scale = (1.0 / (255.0 * std_t))
        return images.to(torch.float32).mul_(scale).sub_(mean_t / std_t)
    brightness = _uniform(n, 1 - config.brightness, 1 + config.brightness, generator)
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator)
    saturation = _uniform(n, 1 - config.saturation, 1 + config.saturation, generator)
    hue = _uniform(n, -config.hue, config.hue, generator) * 2 * math.pi
    matrix = torch.eye(channels).expand(n, channels, channels) * (brightness * contrast)[:, None, None]
    if channels == 3:
        luma = torch.tensor(LUMA)
        saturate = saturation[:, None, None] * torch.eye(3) + (1 - saturation)[:, None, None] * luma[None, None, :]
        matrix = matrix @ _hue_rotation(hue) @ saturate
    # contrast blends towards the image's mean grey (estimated on a thinned grid: it is one number)
    sample = images[:, ::4, ::4, :].to(torch.float32)
    grey = (sample @ torch.tensor(LUMA, device=device)).mean((1, 2)) if channels == 3 else sample.mean((1, 2, 3))
    bias = ((1 - contrast) * brightness).to(device) * grey / 255.0
    matrix = matrix.to(device) / 255.0
    flat = images.reshape(n, -1, channels).to(torch.float32)
    output = torch.baddbmm(bias[:, None, None].expand(n, 1, channels), flat, matrix.transpose(1, 2))
    output = output.clamp_(0.0, 1.0).sub_(mean_t).div_(std_t)
    return output.reshape(images.shape)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """Rotation of RGB space about the grey axis: a hue shift that keeps brightness."""
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    return cos * torch.eye(3) + (1 - cos) / 3 * torch.ones(3, 3) + sin * cross


def _cutout(images: torch.Tensor, fraction: float, generator: torch.Generator) -> None:
    """Erase one square per image to 0 (the dataset mean after normalisation)."""
    n, height, width, _ = images.shape
    side_h, side_w = max(1, round(fraction * height)), max(1, round(fraction * width))
    top = (torch.rand(n, generator=generator) * (height - side_h + 1)).long().to(images.device)
    left = (torch.rand(n, generator=generator) * (width - side_w + 1)).long().to(images.device)
    rows = torch.arange(height, device=images.device)[None, :]
    cols = torch.arange(width, device=images.device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + side_h)
    inside_cols = (cols >= left[:, None]) & (cols < left[:, None] + side_w)
    mask = inside_rows[:, :, None] & inside_cols[:, None, :]
    images.masked_fill_(mask[..., None], 0.0)


def mix_batch(images: torch.Tensor, targets: torch.Tensor, config: AugmentConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one of them at random when both are on) on images and soft targets.

    ``targets`` are one-hot or multi-hot float rows; the returned targets are
    mixed in the same proportion as the pixels.
    """
    choices = [name for name, alpha in (("mixup", config.mixup), ("cutmix", config.cutmix)) if alpha > 0]
    if not choices:
        return images, targets
    name = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    alpha = config.mixup if name == "mixup" else config.cutmix
    lam = _beta(alpha, generator)
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    if name == "mixup":
        mixed = images.mul(lam).add_(images[order], alpha=1 - lam)
    else:
        height, width = images.shape[-2:]
        cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
        top = int(torch.randint(height - cut_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - cut_w + 1, (1,), generator=generator))
        mixed = images.clone()
        mixed[:, :, top:top + cut_h, left:left + cut_w] = images[order, :, top:top + cut_h, left:left + cut_w]
        lam = 1 - cut_h * cut_w / (height * width)
    return mixed, targets.mul(lam).add_(targets[order], alpha=1 - lam)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw seeded from ``generator`` (torch's Beta takes no generator)."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
