"""Comparing strategies over repeats: paired bootstrap CI + Wilcoxon signed-rank test, and summaries.

A learning-curve cell is repeated with several seeds; two strategies run on the same seeds (same
labelled subsets) are paired, so their per-repeat differences are what to test.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fewlabel.evaluate.metrics import quartiles


def summarise(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """``{median, q1, q3, mean, n}`` of the finite values (NaN entries, e.g. an undefined AUC, are
    left out)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "mean": nan, "n": 0}
    q1, median, q3 = quartiles(x)
    return {
        "median": float(median), "q1": float(q1), "q3": float(q3), "mean": float(x.mean()), "n": int(len(x)),
    }


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Mean of ``a - b`` over paired repeats, its percentile-bootstrap CI and a Wilcoxon p-value.

    Pairs where either value is NaN are dropped. Returns ``{mean_diff, median_diff, ci_low, ci_high,
    p_value, n}``; ``p_value`` is two-sided (1.0 when every difference is 0, NaN for fewer than 2 pairs).
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diff = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = len(diff)
    nan = float("nan")
    out: dict[str, Any] = {"mean_diff": nan, "median_diff": nan, "ci_low": nan, "ci_high": nan,
                           "p_value": nan, "n": int(n)}
    if n == 0:
        return out
    out["mean_diff"], out["median_diff"] = float(diff.mean()), float(np.median(diff))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        alpha = (1.0 - ci) / 2.0
        out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(means, [alpha, 1 - alpha]))
    if np.all(diff == 0):
        out["p_value"] = 1.0
    elif n >= 2:
        from scipy import stats  # here, not above: the run store imports this package and needs no scipy

        with warnings.catch_warnings():
            # small-n / ties approximation notices: the p-value is still returned
            warnings.simplefilter("ignore")
            out["p_value"] = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    return out
