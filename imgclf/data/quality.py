"""Image quality: a few numbers measured on each image while ``inspect`` decodes it, and the checks made from them.

Every check is cheap because it reuses the decode ``inspect`` already does
(:mod:`imgclf.data.cache` keeps the numbers beside the other facts): the
decoded image is shrunk to a thumbnail (the shorter side at most
:data:`THUMBNAIL_SIDE` pixels, as blur checks on small images are usually
done, large enough to see a blur of a pixel or two) and a handful of statistics are taken from it. The checks, each a
score with the side it fails on:

- ``blurry``: the strongest edges of the thumbnail's Laplacian over its
  contrast (blur removes high frequencies; the ratio leaves contrast out, so
  a dark but sharp photo is not called blurry);
- ``dark``: the 95th percentile of brightness (a dark photo has no bright
  part); ``bright``: the 5th percentile (an over-exposed one has no dark part);
- ``low-information``: the entropy of the brightness histogram, in bits;
- ``near-constant``: the standard deviation of brightness (a blank or
  one-colour image);
- ``grayscale``: the mean colourfulness (the spread of a pixel's red, green
  and blue), checked only when most of the dataset is in colour;
- ``odd-size``: the shorter side against the dataset's median shorter side;
  ``odd-aspect``: the elongation (longer over shorter side) against the
  dataset's median elongation.

The thresholds were chosen by measuring real clean photos (the flowers set
and CIFAR-10: ``benchmarks/quality_checks.py``, figures in
``benchmarks/results/quality_checks.json``) so that each check flags a
small share of them, and on the same photos with the problem planted
(``benchmarks/label_noise.py``) so that it still finds most of those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

QUALITY_VERSION = 2  # a change in what is measured: part of the decode cache's key for inspect's entries
THUMBNAIL_SIDE = 128  # the shorter side the statistics are taken at (never enlarged)
THUMBNAIL_LONGEST = 256  # and the longer side at most, for panoramas
# what measure() returns, in this order
MEASURES = ("sharpness", "contrast", "low_percentile", "high_percentile", "entropy", "colourfulness")
EPSILON = 1e-6
LEVELS = np.arange(256, dtype=np.float64)
COLOUR_SIDE = 32  # colourfulness is taken on the image averaged down to about this shorter side


def measure(image: Image.Image) -> np.ndarray:
    """The quality measures (:data:`MEASURES`) of a decoded RGB or L image, as float32.

    Brightness statistics come from one histogram of the grey thumbnail
    (percentiles, spread and entropy alike), so the whole costs about as much
    as shrinking the image.
    """
    width, height = image.size
    scale = min(1.0, THUMBNAIL_SIDE / max(1, min(width, height)), THUMBNAIL_LONGEST / max(1, max(width, height)))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey_image = image.convert("L")  # one channel to shrink, not three
    if size != image.size:
        grey_image = grey_image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    grey = np.asarray(grey_image)
    histogram = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    shares = histogram / max(1.0, histogram.sum())
    cumulative = np.cumsum(shares)
    low, high = (float(np.searchsorted(cumulative, share)) for share in (0.05, 0.95))
    mean = float(shares @ LEVELS)
    contrast = float(np.sqrt(max(0.0, shares @ (LEVELS - mean) ** 2)))
    present = shares[shares > 0]
    entropy = float(-(present * np.log2(present)).sum())
    return np.array([_sharpness(grey, contrast), contrast, low, high, entropy, _colourfulness(image)],
                    dtype=np.float32)


def _sharpness(grey: np.ndarray, contrast: float) -> float:
    """The 99th percentile of the 4-neighbour Laplacian's size over the image's contrast (0: too small or flat).

    The sharpest edges, not the average: a photo with a soft background
    (flowers, portraits) is sharp where its subject is. Measured against
    the variance of the Laplacian (the usual score) on the flowers set, this
    found twice as many photos blurred by a 2-pixel Gaussian at the same
    share of clean photos flagged.
    """
    if min(grey.shape) < 3 or contrast < EPSILON:
        return 0.0
    values = grey.astype(np.int16)
    laplacian = np.abs(values[:-2, 1:-1] + values[2:, 1:-1] + values[1:-1, :-2] + values[1:-1, 2:]
                       - 4 * values[1:-1, 1:-1]).ravel()
    rank = int(0.99 * (laplacian.size - 1))
    return float(np.partition(laplacian, rank)[rank]) / contrast


def _colourfulness(image: Image.Image) -> float:
    """The mean over pixels of (largest - smallest) of red, green and blue: 0 for a grey image.

    Taken on the image averaged down to a shorter side of about
    :data:`COLOUR_SIDE` pixels (colour changes slowly), comparing a pixel's
    three channels as whole planes.
    """
    if image.mode != "RGB":
        return 0.0
    small = image.reduce(max(1, min(image.size) // COLOUR_SIDE))
    red, green, blue = (np.asarray(plane, dtype=np.int16) for plane in small.split())
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return float(spread.mean())


@dataclass(frozen=True)
class Check:
    """One quality check: the measure it reads, the side it fails on and where."""

    kind: str
    score: str  # what the number is, for the report
    threshold: float
    below: bool  # flagged when the score is below the threshold (else above)
    help: str

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return scores < self.threshold if self.below else scores > self.threshold


# The thresholds, each chosen so that real clean photos are rarely flagged: the shares of the flowers set and of
# CIFAR-10 each flags are measured by benchmarks/quality_checks.py (benchmarks/results/quality_checks.json), the
# share of planted problems each finds by benchmarks/label_noise.py (benchmarks/results/label_noise.json).
BLURRY_BELOW = 0.7  # sharpness; clean flowers photos: 1% below 0.75, median 2.2; blurred by 2 px: median 0.5
DARK_BELOW = 70.0  # brightness of the brightest 5%, of 255; clean photos: 1% below about 119
BRIGHT_ABOVE = 180.0  # brightness of the darkest 5%; clean photos: 1% above about 130
LOW_INFORMATION_BELOW = 3.0  # bits of brightness entropy (8 at most); clean photos: 1% below about 4.6
NEAR_CONSTANT_BELOW = 4.0  # brightness standard deviation, of 255; clean photos: 1% below about 17
GRAYSCALE_BELOW = 2.0  # colourfulness, of 255; a grey JPEG's colour noise stays below 1
COLOUR_SHARE = 0.9  # the grayscale check runs when at least this share of the images is in colour
ODD_SIZE_BELOW = 0.35  # shorter side over the dataset's median shorter side
ODD_ASPECT_ABOVE = 2.0  # elongation over the dataset's median elongation (3:1 among 3:2 photos)

CHECKS = (
    Check("blurry", "sharpness", BLURRY_BELOW, True, "few sharp edges: out of focus, moving or blurred"),
    Check("dark", "brightness of the brightest 5%", DARK_BELOW, True, "too dark to see much"),
    Check("bright", "brightness of the darkest 5%", BRIGHT_ABOVE, False, "washed out: over-exposed or faded"),
    Check("low-information", "entropy (bits)", LOW_INFORMATION_BELOW, True, "few grey levels: icons, drawings, masks, mostly one shade"),
    Check("near-constant", "brightness spread", NEAR_CONSTANT_BELOW, True, "one colour all over: blank or solid"),
    Check("grayscale", "colourfulness", GRAYSCALE_BELOW, True, "no colour, among colour photos"),
    Check("odd-size", "shorter side / the median's", ODD_SIZE_BELOW, True, "much smaller than the other images"),
    Check("odd-aspect", "elongation / the median's", ODD_ASPECT_ABOVE, False, "much longer or taller than the others"),
)
CHECKS_BY_KIND = {check.kind: check for check in CHECKS}


@dataclass(frozen=True)
class QualityIssue:
    """One image one check flags: its position in the dataset, the check and its score."""

    index: int
    kind: str
    score: float


def quality_scores(quality: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> dict[str, np.ndarray]:
    """Every check's score for every image (NaN for broken images), from the measures and the image sizes.

    The size checks compare each image with the dataset's median, so they
    need every image's size at once.
    """
    column = {name: quality[:, position] for position, name in enumerate(MEASURES)}
    shorter = np.minimum(widths, heights).astype(np.float64)
    elongation = np.maximum(widths, heights) / np.maximum(shorter, 1)
    readable = ~np.isnan(column["contrast"])
    median_side = float(np.median(shorter[readable])) if readable.any() else 1.0
    median_elongation = float(np.median(elongation[readable])) if readable.any() else 1.0
    scores = {"blurry": column["sharpness"], "dark": column["high_percentile"], "bright": column["low_percentile"],
              "low-information": column["entropy"], "near-constant": column["contrast"],
              "grayscale": column["colourfulness"], "odd-size": shorter / max(median_side, 1.0),
              "odd-aspect": elongation / max(median_elongation, 1.0)}
    return {kind: np.where(readable, values, np.nan) for kind, values in scores.items()}


def find_quality_issues(quality: np.ndarray, widths: np.ndarray, heights: np.ndarray
                        ) -> tuple[list[QualityIssue], list[str]]:
    """The images each check flags, worst first within a check, and notes on checks that did not run.

    A near-constant image is not also called blurry or low in information (its
    sharpness and entropy mean nothing); grayscale is only a problem among
    colour photos, so that check runs when at least :data:`COLOUR_SHARE` of the
    images are in colour.
    """
    scores = quality_scores(quality, widths, heights)
    readable = ~np.isnan(scores["near-constant"])
    flat = CHECKS_BY_KIND["near-constant"].flags(np.nan_to_num(scores["near-constant"], nan=np.inf))
    notes = []
    colourful = ~CHECKS_BY_KIND["grayscale"].flags(np.nan_to_num(scores["grayscale"], nan=0.0))
    colour_share = float(colourful[readable].mean()) if readable.any() else 0.0
    issues: list[QualityIssue] = []
    for check in CHECKS:
        if check.kind == "grayscale" and colour_share < COLOUR_SHARE:
            notes.append(f"grayscale: not checked, {colour_share:.0%} of the images are in colour "
                         f"(the check runs from {COLOUR_SHARE:.0%})")
            continue
        values = scores[check.kind]
        flagged = readable & check.flags(np.nan_to_num(values, nan=check.threshold))
        if check.kind in ("blurry", "low-information"):
            flagged &= ~flat
        order = np.flatnonzero(flagged)
        order = order[np.argsort(values[order] if check.below else -values[order], kind="stable")]
        issues += [QualityIssue(int(index), check.kind, float(values[index])) for index in order]
    return issues, notes
