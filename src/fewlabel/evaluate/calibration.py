"""Calibration of predicted probabilities: expected calibration error (ECE) and reliability bins.

Top-label ECE (Guo et al. 2017): the top-class probability (confidence) is put in ``n_bins``
equal-width bins of [0, 1], bin b holding confidences in (b/M, (b+1)/M] (0 in the first), and

    ECE = sum_b (n_b / n) |accuracy_b - mean confidence_b|

Classwise ECE (Kull et al. 2019) does the same for every class's probability against "is this class"
and averages over classes. Both are also given under bootstrap weights (one row per resample), so the
run-wide plan of ``evaluate.cluster_bootstrap`` (test groups × repeats) gives their intervals, as it
does for every other metric of the report.

    ece = expected_calibration_error(y, proba)                  # one model, the whole test set
    m = per_repeat_ece(plan, y, {0: proba_r0, 1: proba_r1})     # RepeatMetrics: (R,) and (B, R)
    s = ece_summary(plan, m)                                    # median over repeats, mean, 95% CI
    bins = reliability_bins(y, [proba_r0, proba_r1])            # pooled over repeats, for a diagram
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewlabel.evaluate.cluster_bootstrap import BootstrapPlan, RepeatMetrics

N_BINS = 15
KINDS = ("top", "classwise")


def bin_index(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(n,) bin of each confidence: b for (b/M, (b+1)/M], with 0 put in bin 0."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _gap_under_weights(weights: np.ndarray, confidence: np.ndarray, hit: np.ndarray, n_bins: int
                       ) -> np.ndarray:
    """(B,) sum over bins of |weighted hits − weighted confidence| / total weight: the ECE of one
    score. |Σw·hit − Σw·conf| over a bin is its weight times |accuracy − mean confidence|."""
    onehot = np.zeros((len(confidence), n_bins))
    onehot[np.arange(len(confidence)), bin_index(confidence, n_bins)] = 1.0
    per_bin = np.asarray(weights, dtype=np.float64) @ (onehot * (hit - confidence)[:, None])  # (B, M)
    total = np.asarray(weights, dtype=np.float64).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(per_bin).sum(axis=1) / total


def ece_under_weights(weights: np.ndarray, y: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS,
                      kind: str = "top") -> np.ndarray:
    """(B,) ECE of one model's test probabilities ``proba`` (n, K) with true classes ``y`` (n,) under
    each row of ``weights`` (B, n), e.g. a bootstrap plan's counts. ``kind``: "top" or "classwise"."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if kind == "top":
        pred = p.argmax(axis=1)  # ties go to the lower class index, as every other metric here
        return _gap_under_weights(weights, p[np.arange(len(y)), pred], (pred == y).astype(np.float64), n_bins)
    if kind == "classwise":
        return np.mean([_gap_under_weights(weights, p[:, k], (y == k).astype(np.float64), n_bins)
                        for k in range(p.shape[1])], axis=0)
    raise ValueError(f"unknown ECE kind {kind!r}; choose from {', '.join(KINDS)}")


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS, kind: str = "top"
                               ) -> float:
    """ECE of one model on the whole test set (0 = its probabilities mean what they say)."""
    return float(ece_under_weights(np.ones((1, len(y))), y, proba, n_bins, kind)[0])


def per_repeat_ece(plan: BootstrapPlan, y: np.ndarray, probas: Mapping[int, np.ndarray], n_bins: int = N_BINS,
                   kind: str = "top") -> RepeatMetrics:
    """ECE of each repeat's probabilities (``{repeat: (n, K)}``) on the whole test set and under every
    resample of ``plan`` — the same shape ``cluster_bootstrap.per_repeat_metric`` gives any metric."""
    repeats = sorted(probas)
    ones = np.ones((1, len(y)))
    point = np.array([ece_under_weights(ones, y, probas[r], n_bins, kind)[0] for r in repeats])
    boot = np.stack([ece_under_weights(plan.weights, y, probas[r], n_bins, kind) for r in repeats], axis=1)
    return RepeatMetrics(repeats=repeats, point=point, boot=boot)


def ece_summary(plan: BootstrapPlan, metrics: RepeatMetrics, ci: float = 0.95) -> dict[str, Any]:
    """Median, quartiles and mean over repeats, and a 95% CI of the mean from ``plan``'s resamples
    (test groups × repeats; the repeats drawn as many times as this cell has: a cell with 2 finished
    repeats drawn as often as the run's most would look surer than it is).

    The interval is the percentile interval re-centred by the bootstrap bias (``boot_bias``): a
    resample repeats some images and drops others, so its bins are noisier and its ECE runs higher
    than the sample's (unlike a mean or an AUC); uncorrected, the interval of a well-calibrated model
    would often lie wholly above its own ECE. The bias is taken from the test-set resampling alone
    (a mean over repeats has none), so it carries no noise from the repeat draws."""
    finite = np.isfinite(metrics.point)
    point = metrics.point[finite]
    nan = float("nan")
    out: dict[str, Any] = {"median": nan, "q1": nan, "q3": nan, "mean": nan, "ci_low": nan, "ci_high": nan,
                           "boot_bias": nan, "n_repeats": len(metrics.repeats)}
    if len(point) == 0:
        return out
    q1, med, q3 = np.quantile(point, [0.25, 0.5, 0.75])
    out.update(median=float(med), q1=float(q1), q3=float(q3), mean=float(point.mean()))
    boot = metrics.resampled_mean(plan, len(metrics.repeats))
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return out
    with np.errstate(invalid="ignore"):
        bias = float(np.nanmean(np.nanmean(metrics.boot[:, finite], axis=0) - point))
    bias = bias if np.isfinite(bias) else 0.0
    alpha = (1 - ci) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) - bias
    # an ECE is never below 0, so neither is its interval
    out.update(ci_low=float(max(0.0, low)), ci_high=float(max(0.0, high)), boot_bias=bias)
    return out


@dataclass
class ReliabilityBins:
    """The non-empty top-label bins of some predictions: per bin its image count, mean confidence and
    accuracy (the points of a reliability diagram; on the diagonal = calibrated)."""

    n_bins: int
    index: np.ndarray  # (k,) which of the n_bins each point is
    count: np.ndarray  # (k,) images in it
    confidence: np.ndarray  # (k,) their mean top-class probability
    accuracy: np.ndarray  # (k,) the share of them predicted right

    @property
    def ece(self) -> float:
        """The top-label ECE of the pooled predictions."""
        n = self.count.sum()
        return float(np.sum(self.count * np.abs(self.accuracy - self.confidence)) / n) if n else float("nan")


def reliability_bins(y: np.ndarray, probas: Sequence[np.ndarray], n_bins: int = N_BINS) -> ReliabilityBins:
    """Top-label reliability bins of one or more models' probabilities on the same test set ``y``
    (e.g. the repeats of a cell), pooled: every image of every model counts once."""
    y = np.asarray(y, dtype=np.int64)
    conf, hit = [], []
    for p in probas:
        p = np.asarray(p, dtype=np.float64)
        pred = p.argmax(axis=1)
        conf.append(p[np.arange(len(y)), pred])
        hit.append(pred == y)
    c = np.concatenate(conf) if conf else np.zeros(0)
    h = np.concatenate(hit).astype(np.float64) if hit else np.zeros(0)
    b = bin_index(c, n_bins)
    count = np.bincount(b, minlength=n_bins)
    keep = np.flatnonzero(count)  # an empty bin has no accuracy: left out, not drawn at 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=c, minlength=n_bins) / count
        acc = np.bincount(b, weights=h, minlength=n_bins) / count
    return ReliabilityBins(n_bins=n_bins, index=keep, count=count[keep], confidence=mean_conf[keep],
                           accuracy=acc[keep])
