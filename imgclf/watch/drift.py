"""Has what the model is shown changed? Tests per time window, each against the model's own val data.

**Embedding drift: an MMD permutation test of each window against val's embeddings.**
A window's pooled embeddings (up to :data:`TEST_SIZE` of them) are compared
with a fixed reference sample of val embeddings (up to :data:`REFERENCE_SIZE`)
by the unbiased squared maximum mean discrepancy (Gretton et al. 2012), with
the Gaussian kernel ``exp(-|x - y|^2 / bandwidth)`` and the bandwidth set by
the median heuristic at training time (the median squared distance between
reference embeddings). The window's threshold is the statistic's
``1 - ALPHA`` quantile over :data:`PERMUTATIONS` random relabellings of the
window and the reference pooled together, and its p-value the share of
relabellings at least as far (Gretton et al. 2012, section 5).

Why this test: MMD compares whole distributions in the embedding space the
model decides in, so it sees a new camera, blur, a colour cast or a new
kind of object as they move the features, before (and whether or not)
they change the predicted classes; it needs no labels and no second model
trained per window (as a classifier two-sample test would). Val, not
training images, is the reference: a fine-tuned model pulls its training
photos together, and every honest stream would look drifted from them.

Why a permutation threshold per window rather than one fixed at training:
the first version measured a fixed threshold at training time, the 0.99
quantile of the statistic on windows drawn from one half of val against
the other half. With a few hundred val images those windows overlap and
the reference half is the same in all of them, so their spread understates
that of fresh photos: on the flowers benchmark 6.7% of windows of photos
the model had never seen raised an alarm (nominal 1%, goal at most 5%).
A permutation test holds its level for any window size and any val size,
with nothing estimated from a small calibration sample: when the window's
photos come from the distribution of val's, every relabelling is as likely
as the observed one, so a window alarms with probability at most
:data:`ALPHA`. It also lets every window be tested in full against all of
(up to 1,000 of) val, not a window of a third of a val half (79 of 475 val
photos before), which keeps detection where the lower, wrong bar had it.
Measured there: no window of 75 alarmed under no drift, and gradual blur,
JPEG artefacts, a colour cast and darkening were first flagged after 600 to
1,200 requests (``no_drift`` and ``drift/*`` in
``benchmarks/results/monitor.json``). The cost is one (n + m)^2 kernel
matrix and one matrix product with the relabellings per window (about 0.7
billion float32 multiply-adds for 200 against 1,000), cheap enough for
serve's monitor thread.

A bundle written before this test kept its fixed threshold; it is not used.
The test needs only the stored val embeddings and bandwidth, which every
reference has, so an older bundle is tested the new way without retraining.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

TEST_SIZE = 200  # embeddings per window that enter the test (a larger window is sampled down to it)
REFERENCE_SIZE = 1000  # val embeddings a window is compared with
MIN_WINDOW = 20  # fewer requests than this in a window: no drift verdict
ALPHA = 0.01  # a window whose p-value is at most this is drift (a false alarm in 100 windows)
PERMUTATIONS = 499  # relabellings per window: p-values in steps of 1/500, so ALPHA is exactly reachable
CHECK_WINDOWS = 50  # val windows tested against the rest of val at training, to measure the false-alarm rate
CLASS_SHARE_P = 0.001  # the class-share test flags a window below this p-value
NOVELTY_P = 0.001  # a window's novel images are an alarm when so many would happen by chance this rarely


@dataclass
class DriftCalibration:
    """The drift test's settings, fixed at training, and its false-alarm rate measured on val then."""

    bandwidth: float  # the RBF kernel's bandwidth (median squared distance of the reference sample)
    test_size: int  # at most this many embeddings of a window enter the test
    false_alarm_rate: float | None  # share of val windows alarming against the rest of val; None: not measured

    def to_json(self) -> dict[str, Any]:
        return {"method": "permutation", "bandwidth": self.bandwidth, "test_size": self.test_size,
                "alpha": ALPHA, "permutations": PERMUTATIONS, "false_alarm_rate": self.false_alarm_rate}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftCalibration:
        """The settings; a reference written before the permutation test keeps its bandwidth, its rate is unknown."""
        measured = data.get("false_alarm_rate") if data.get("method") == "permutation" else None
        return cls(float(data["bandwidth"]), max(int(data["test_size"]), TEST_SIZE),
                   None if measured is None else float(measured))


@dataclass(frozen=True)
class DriftVerdict:
    """One window's test: its MMD^2, the permutation threshold, the p-value, and how many embeddings entered."""

    statistic: float
    threshold: float
    p_value: float
    tested: int

    @property
    def drift(self) -> bool:
        return self.statistic > self.threshold


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
    """The MMD permutation test of windows against one reference sample, whose own kernel matrix is kept."""

    def __init__(self, reference: np.ndarray, bandwidth: float) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        self.bandwidth = bandwidth
        self.reference_kernel = self.kernel(self.reference, self.reference)

    def kernel(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.exp(-squared_distances(x, y) / self.bandwidth)

    def test(self, window: np.ndarray, seed: int = 0) -> DriftVerdict:
        """The verdict on ``window`` (n >= 2 embeddings): its MMD^2 against PERMUTATIONS relabellings' threshold."""
        across = self.kernel(window, self.reference)
        pooled = np.block([[self.kernel(window, window), across], [across.T, self.reference_kernel]])
        return permutation_verdict(pooled, len(window), seed)


def permutation_verdict(pooled: np.ndarray, n: int, seed: int = 0) -> DriftVerdict:
    """The test on the kernel matrix of a window (its first ``n`` rows) and a reference (the rest), pooled."""
    m = len(pooled) - n
    rng = np.random.default_rng(seed)
    members = np.zeros((n + m, PERMUTATIONS + 1))  # column 0: the window as observed; then relabellings
    members[:n, 0] = 1.0
    for column in range(1, PERMUTATIONS + 1):
        members[rng.choice(n + m, n, replace=False), column] = 1.0
    statistics = _unbiased_mmd2(pooled, members, n, m)
    observed, relabelled = statistics[0], np.sort(statistics[1:])[::-1]
    exceeding = int(np.floor(ALPHA * (PERMUTATIONS + 1) + 1e-9)) - 1  # p <= ALPHA: at most this many beat it
    threshold = float(relabelled[exceeding]) if exceeding >= 0 else float("inf")
    p_value = float((np.sum(relabelled >= observed) + 1) / (PERMUTATIONS + 1))
    return DriftVerdict(float(observed), threshold, p_value, n)


def _unbiased_mmd2(kernel: np.ndarray, members: np.ndarray, n: int, m: int) -> np.ndarray:
    """The unbiased MMD^2 for each column of ``members`` (1 for the n rows of one sample, 0 for the other m).

    One matrix product gives every relabelling's within-sample sum (in
    float32, twice as fast, and sums of at most a few thousand kernel values
    keep seven digits); the rest follows from the kernel's row sums, total and diagonal.
    """
    rows, diagonal = kernel.sum(axis=1), np.diag(kernel)
    single = members.astype(np.float32)
    within_x = np.einsum("ip,ip->p", single, kernel.astype(np.float32) @ single).astype(np.float64)
    row_x, diagonal_x = rows @ members, diagonal @ members
    within_y = kernel.sum() - 2.0 * row_x + within_x
    across = row_x - within_x
    return ((within_x - diagonal_x) / (n * (n - 1)) + (within_y - (diagonal.sum() - diagonal_x)) / (m * (m - 1))
            - 2.0 * across / (n * m))


def sample_rows(embeddings: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows chosen at random without replacement (all of them when there are not more)."""
    if len(embeddings) <= size:
        return embeddings
    return embeddings[np.random.default_rng(seed).choice(len(embeddings), size, replace=False)]


def calibrate(val: np.ndarray, test_size: int = TEST_SIZE, seed: int = 0) -> DriftCalibration:
    """The bandwidth for ``val``'s embeddings and the test's false-alarm rate on val, measured now.

    Each of :data:`CHECK_WINDOWS` checks draws a window of val (``test_size``,
    at most a third of val) and tests it against the rest: disjoint photos
    the model never trained on, so an alarm is a false one.
    """
    bandwidth = median_bandwidth(val[:REFERENCE_SIZE])
    size = max(2, min(test_size, len(val) // 3))
    kernel = np.exp(-squared_distances(val, val) / bandwidth)  # every pair once: each check takes its block
    rng = np.random.default_rng(seed)
    alarms = 0
    for check in range(CHECK_WINDOWS):
        order = rng.permutation(len(val))
        chosen = np.concatenate([order[:size], order[size:][:REFERENCE_SIZE]])  # the window, then the rest
        alarms += permutation_verdict(kernel[np.ix_(chosen, chosen)], size, seed=check).drift
    return DriftCalibration(bandwidth, test_size, alarms / CHECK_WINDOWS)


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
