"""Has what the model is shown changed? Two tests per time window, both calibrated on the model's own data.

**Embedding drift: MMD with an RBF kernel, its threshold calibrated on val at training time.**
A window's pooled embeddings (up to :data:`TEST_SIZE` of them) are compared
with a fixed reference sample of val embeddings by the unbiased squared
maximum mean discrepancy (Gretton et al. 2012), with the Gaussian kernel
``exp(-|x - y|^2 / bandwidth)`` and the bandwidth set by the median heuristic
(the median squared distance between reference embeddings).

Why this test: MMD compares whole distributions in the embedding space the
model decides in, so it sees a new camera, blur, a colour cast or a new
kind of object as they move the features, before (and whether or not)
they change the predicted classes; it needs no labels, no second model to
train per window (as a classifier two-sample test would), and one kernel
matrix per window is cheap on a CPU. Its weakness is that the statistic's
scale depends on the data and the window size, so a fixed number cannot be
its threshold: we calibrate it.

Why calibrate on val rather than permute per window: the reference and
the calibration windows are two disjoint halves of val, photos the model
never trained on, so "no drift" means "as unlike the reference as other
val photos are", which is what production should look like. Training
images would not do: a fine-tuned model pulls its training photos
together, and every honest stream would look drifted from them. The null
distribution of the statistic is measured once, on many windows drawn from
the calibration half, and its :data:`QUANTILE` quantile is the threshold;
a window's ``p`` is the share of null windows at least as far. The
measured false-alarm rate (fresh null windows over the threshold) is
stored beside it. A per-window permutation test would give the same
guarantee but costs hundreds of kernel sums per window, on the server too.

**Novel images**: about 1% of val photos are novel by construction
(:mod:`imgclf.watch.reference`); a window raises a novelty alarm when its
count of novel images would be that high by chance less than :data:`NOVELTY_P`
of the time (a one-sided binomial test).

**Predicted-class shares: Pearson's chi-square** of the window's counts
of predicted classes against the training prior (scipy), flagged at
:data:`CLASS_SHARE_P`. With thousands of requests any small change is
"significant", so the report shows the shares themselves beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TEST_SIZE = 200  # embeddings per window that enter the test (a larger window is sampled down to it)
MIN_WINDOW = 20  # fewer requests than this in a window: no drift verdict
NULL_WINDOWS = 300  # val windows drawn to measure the statistic's distribution under no drift
QUANTILE = 0.99  # the threshold: this quantile of the statistic on val windows (a false alarm in 100 windows)
CLASS_SHARE_P = 0.001  # the class-share test flags a window below this p-value
NOVELTY_P = 0.001  # a window's novel images are an alarm when so many would happen by chance this rarely


@dataclass
class DriftCalibration:
    """The drift test's settings and threshold, measured on val when the model was trained."""

    bandwidth: float  # the RBF kernel's bandwidth (median squared distance of the reference sample)
    test_size: int  # embeddings per window in the test, which the threshold is for
    threshold: float  # MMD^2 above this: drift
    false_alarm_rate: float  # share of fresh val windows above the threshold
    null: list[float]  # the statistic on the calibration windows, sorted: a window's p-value is read from it

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "quantile": QUANTILE, "null_windows": len(self.null)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftCalibration:
        return cls(float(data["bandwidth"]), int(data["test_size"]), float(data["threshold"]),
                   float(data["false_alarm_rate"]), sorted(float(value) for value in data["null"]))

    def p_value(self, statistic: float) -> float:
        """The share of no-drift windows whose statistic is at least this one's (at least 1 in len(null) + 1)."""
        null = np.asarray(self.null)
        return float((np.sum(null >= statistic) + 1) / (len(null) + 1))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(len(x), len(y)) squared Euclidean distances, in float64."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    distances = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(distances, 0.0)


def median_bandwidth(reference: np.ndarray) -> float:
    """The median heuristic: the median squared distance between distinct reference embeddings (1.0 if all equal)."""
    distances = squared_distances(reference, reference)
    off_diagonal = distances[~np.eye(len(reference), dtype=bool)]
    median = float(np.median(off_diagonal)) if off_diagonal.size else 0.0
    return median if median > 0 else 1.0


class MMDTest:
    """The unbiased MMD^2 of windows against one reference sample; the reference's own kernel mean is kept."""

    def __init__(self, reference: np.ndarray, bandwidth: float) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        self.bandwidth = bandwidth
        self.reference_mean = _off_diagonal_mean(np.exp(-squared_distances(reference, reference) / bandwidth))

    def statistic(self, window: np.ndarray) -> float:
        """MMD^2 between ``window`` (n >= 2 embeddings) and the reference."""
        within = _off_diagonal_mean(np.exp(-squared_distances(window, window) / self.bandwidth))
        across = float(np.exp(-squared_distances(window, self.reference) / self.bandwidth).mean())
        return within + self.reference_mean - 2.0 * across


def _off_diagonal_mean(kernel: np.ndarray) -> float:
    n = len(kernel)
    return float((kernel.sum() - np.trace(kernel)) / (n * (n - 1)))


def sample_rows(embeddings: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows chosen at random without replacement (all of them when there are not more)."""
    if len(embeddings) <= size:
        return embeddings
    return embeddings[np.random.default_rng(seed).choice(len(embeddings), size, replace=False)]


class NullWindows:
    """Windows of val's calibration half, whose statistics are index sums of two kernel matrices computed once."""

    def __init__(self, test: MMDTest, calibration: np.ndarray) -> None:
        self.test = test
        self.within = np.exp(-squared_distances(calibration, calibration) / test.bandwidth)
        self.across = np.exp(-squared_distances(calibration, test.reference) / test.bandwidth).mean(axis=1)

    def statistics(self, size: int, windows: int, seed: int) -> np.ndarray:
        """The statistic on ``windows`` windows of ``size`` drawn without replacement from the calibration half."""
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(windows):
            chosen = rng.choice(len(self.across), size, replace=False)
            within = _off_diagonal_mean(self.within[np.ix_(chosen, chosen)])
            values.append(within + self.test.reference_mean - 2.0 * float(self.across[chosen].mean()))
        return np.array(values)

    def calibrate(self, test_size: int, seed: int = 0) -> DriftCalibration:
        """The threshold for windows of ``test_size`` (at most a third of the half) and its measured false alarms.

        A third: windows drawn from a finite half overlap, and the smaller the
        share of the half each takes, the closer their spread to that of fresh photos.
        """
        size = max(2, min(test_size, len(self.across) // 3))
        null = self.statistics(size, NULL_WINDOWS, seed)
        threshold = float(np.quantile(null, QUANTILE))
        fresh = self.statistics(size, NULL_WINDOWS, seed + 1)
        return DriftCalibration(self.test.bandwidth, size, threshold, float(np.mean(fresh > threshold)),
                                sorted(float(value) for value in null))


def calibrate(reference: np.ndarray, calibration: np.ndarray, test_size: int = TEST_SIZE) -> DriftCalibration:
    """The drift test for windows of ``test_size``: the reference half's bandwidth, threshold and false alarms."""
    return NullWindows(MMDTest(reference, median_bandwidth(reference)), calibration).calibrate(test_size)


def class_share_test(counts: np.ndarray, prior: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-square statistic and p-value of predicted-class counts against the training prior's shares."""
    from scipy.stats import chisquare

    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0, 1.0
    expected = np.asarray(prior, dtype=np.float64) / np.sum(prior) * total
    kept = expected > 0  # a class training never saw cannot be expected; its predictions count in no cell
    result = chisquare(counts[kept], expected[kept] * counts[kept].sum() / expected[kept].sum())
    return float(result.statistic), float(result.pvalue)


def novelty_excess(novel: int, total: int, expected_rate: float) -> float:
    """One-sided binomial p-value of ``novel`` or more novel images in ``total`` when each is novel at ``expected_rate``."""
    from scipy.stats import binomtest

    if total == 0:
        return 1.0
    return float(binomtest(novel, total, expected_rate, alternative="greater").pvalue)
