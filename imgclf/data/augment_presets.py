"""What augmentations exist: the settings and the named presets.

Kept apart from :mod:`imgclf.data.augment` (which applies them with torch)
so that the CLI can list and validate presets without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from imgclf.errors import ImgclfError


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; every field at its default means "off"."""

    hflip: bool = False
    vflip: bool = False
    translate: float = 0.0  # largest shift, as a fraction of the image side
    reflect: bool = False  # a pure shift fills the uncovered border by mirroring the image, not with black
    alternate_flip: bool = False  # with hflip: each image flipped on every other epoch, not at random
    scale: tuple[float, float] = (1.0, 1.0)  # area kept by the random resized crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range of that crop
    rotation: float = 0.0  # largest rotation in degrees
    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # fraction of a full turn, at most 0.5
    cutout: float = 0.0  # side of the erased square, as a fraction of the image side
    mixup: float = 0.0  # Beta(alpha, alpha) parameter; 0 = off
    cutmix: float = 0.0

    @property
    def geometric(self) -> bool:
        return self.translate > 0 or self.scale != (1.0, 1.0) or self.rotation > 0

    @property
    def colour(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "light": AugmentConfig(hflip=True, translate=0.125),
    "standard": AugmentConfig(hflip=True, translate=0.1, scale=(0.6, 1.0), brightness=0.2, contrast=0.2,
                              saturation=0.2),
    "strong": AugmentConfig(hflip=True, translate=0.15, scale=(0.35, 1.0), rotation=15.0, brightness=0.4,
                            contrast=0.4, saturation=0.4, hue=0.05, cutout=0.25),
    # airbench94's: shifts of up to 2 px at 32 px with reflected borders, and alternating flips
    "airbench": AugmentConfig(hflip=True, translate=0.0625, reflect=True, alternate_flip=True),
}


def augment_config(preset: str = "standard", **overrides: object) -> AugmentConfig:
    """A named preset with some fields changed, e.g. ``augment_config("light", mixup=0.2)``."""
    if preset not in PRESETS:
        raise ImgclfError(f"--augment '{preset}' is not a preset; choose one of {', '.join(PRESETS)}")
    names = {field.name for field in fields(AugmentConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ImgclfError(f"unknown augmentation setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    return replace(PRESETS[preset], **overrides)  # type: ignore[arg-type]  # names checked above; values as the caller gives
