"""A two-way bootstrap over test groups (patients) × repeats, shared by every strategy and size.

A learning-curve value varies for two reasons: which labelled images a repeat drew (and its seed),
and which test patients happened to be in the one fixed test set. Bootstrapping the ≤ 10 repeat
values alone ignores the second and under-covers. Here every resample draws test groups with
replacement (stratified by the group's class, so no resample loses a class) AND repeats with
replacement; the SAME draws serve every strategy and size, so a difference between two strategies is
resampled paired, and a size-to-size curve is resampled as a whole (what the labels-needed interval
needs).

    plan = draw_plan(groups, labels, n_repeats=6, n_boot=2000, seed=0)
    a = per_repeat_metric(plan, y, [proba_r0, proba_r1, ...], "roc_auc")   # (B, R) and (R,)
    d = paired_summary(plan, a, b)      # difference of means, CI, bootstrap p-value
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewlabel.evaluate.metrics import auc_from_weights, metrics_from_confusion, weighted_confusion
from fewlabel.evaluate.resample import group_strata, stratified_counts

#: Fewest paired repeats behind a "differs" verdict. A bootstrap over R repeats draws from only
#: C(2R-1, R) distinct repeat sets (3 at R = 2, 35 at R = 4) and understates the spread between repeats
#: by a factor (R-1)/R, so with fewer repeats the interval is shown but no verdict is given.
MIN_REPEATS_FOR_VERDICT = 5


@dataclass
class BootstrapPlan:
    """The resamples: per test sample a count (B, n) and per resample a uniform number per repeat slot
    (B, R) that picks repeats among those available (so a missing repeat never unpairs two cells)."""

    weights: np.ndarray  # (B, n) how often each test sample is drawn
    repeat_u: np.ndarray  # (B, R) uniforms in [0, 1)
    n_groups: int
    n_strata: int
    seed: int

    @property
    def n_boot(self) -> int:
        return int(self.weights.shape[0])


def draw_plan(groups: Sequence[Any] | np.ndarray, labels: Sequence[int] | np.ndarray, n_repeats: int,
              n_boot: int = 2000, seed: int = 0) -> BootstrapPlan:
    """The shared resamples for a test set (``groups``/``labels`` in its row order) and up to
    ``n_repeats`` repeats. Same seed, same plan."""
    labels = np.asarray(labels, dtype=np.int64)
    gidx, strata = group_strata(np.asarray(groups), labels)
    rng = np.random.default_rng(seed)
    per_group = stratified_counts(strata, n_boot, rng)
    return BootstrapPlan(weights=per_group[:, gidx], repeat_u=rng.random((n_boot, max(1, n_repeats))),
                         n_groups=int(len(strata)), n_strata=int(len(np.unique(strata))), seed=seed)


def metric_under_weights(weights: np.ndarray, y: np.ndarray, proba: np.ndarray, metric: str) -> np.ndarray:
    """(B,) values of one metric of one model's test probabilities under each resample's weights."""
    proba = np.asarray(proba, dtype=np.float64)
    if metric == "roc_auc":
        return auc_from_weights(weights, y, proba)
    cm = weighted_confusion(weights, y, proba.argmax(axis=1), proba.shape[1])
    return metrics_from_confusion(cm)[metric]


@dataclass
class RepeatMetrics:
    """One cell group (a strategy at a size): its repeats, the metric on the full test set per repeat
    (R,), and under every resample's test weights (B, R)."""

    repeats: list[int]
    point: np.ndarray
    boot: np.ndarray

    def resampled_mean(self, plan: BootstrapPlan, slots: int) -> np.ndarray:
        """(B,) mean over repeats drawn with replacement (``slots`` draws) for each resample."""
        pick = np.minimum((plan.repeat_u[:, :slots] * len(self.repeats)).astype(int), len(self.repeats) - 1)
        vals = np.take_along_axis(self.boot, pick, axis=1)
        return np.nanmean(vals, axis=1) if np.isnan(vals).any() else vals.mean(axis=1)


def per_repeat_metric(plan: BootstrapPlan, y: np.ndarray, probas: dict[int, np.ndarray], metric: str
                      ) -> RepeatMetrics:
    """The metric of each repeat's probabilities (``{repeat: (n, K)}``), point and resampled."""
    y = np.asarray(y, dtype=np.int64)
    repeats = sorted(probas)
    ones = np.ones((1, len(y)))
    point = np.array([metric_under_weights(ones, y, probas[r], metric)[0] for r in repeats])
    boot = np.stack([metric_under_weights(plan.weights, y, probas[r], metric) for r in repeats], axis=1)
    return RepeatMetrics(repeats=repeats, point=point, boot=boot)


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0": twice the smaller tail share of the
    resampled differences on either side of 0, with the +1 correction so it is never exactly 0."""
    d = diffs[np.isfinite(diffs)]
    if len(d) == 0:
        return float("nan")
    below, above = (np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_summary(plan: BootstrapPlan, a: RepeatMetrics, b: RepeatMetrics, ci: float = 0.95
                   ) -> dict[str, Any]:
    """Difference of mean-over-repeats ``a - b`` on repeats both have, with its percentile CI and
    p-value from the shared resamples (test groups × repeats, paired). ``few_pairs``: fewer than
    ``MIN_REPEATS_FOR_VERDICT`` common repeats, too few for a verdict whatever the interval says."""
    common = sorted(set(a.repeats) & set(b.repeats))
    nan = float("nan")
    out: dict[str, Any] = {"mean_diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "n": len(common),
                           "n_groups": plan.n_groups, "n_boot": plan.n_boot, "n_boot_used": 0,
                           "method": "paired cluster bootstrap (test groups × repeats)",
                           "few_pairs": len(common) < MIN_REPEATS_FOR_VERDICT}
    if not common:
        return out
    ia = [a.repeats.index(r) for r in common]
    ib = [b.repeats.index(r) for r in common]
    diff = RepeatMetrics(common, a.point[ia] - b.point[ib], a.boot[:, ia] - b.boot[:, ib])
    point = diff.point[np.isfinite(diff.point)]
    if len(point) == 0:
        return out
    boot = diff.resampled_mean(plan, len(common))
    used = boot[np.isfinite(boot)]
    alpha = (1 - ci) / 2
    out.update(mean_diff=float(point.mean()), median_diff=float(np.median(point)),
               p_value=bootstrap_p_value(used), n_boot_used=int(len(used)))
    if len(used):
        out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(used, [alpha, 1 - alpha]))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and does not count as a comparison)."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), np.nan)
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="mergesort")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
