"""Means with a bootstrap interval over images, and the verdicts the explanation checks read off them.

Every check compares a method with a reference on the same images (random orders, another image's
map, the mask's area): one paired difference per image. Its mean gets a 95% bootstrap interval, the
images resampled with replacement: the expanded percentile interval (Hesterberg 2015), whose
quantiles are moved out as a t interval's would be for n images. The plain percentile interval is
too narrow for the 6 to 20 images checked: in a simulation of normal differences with mean 0 it
excluded 0 about 1 time in 10 at 12 images and 1 in 7 at 6 (the expanded one: 1 in 16 at both).
A verdict names a side only when the whole interval lies on it; otherwise the method is "not
distinguishable" from the reference, with the number of images said, since that bounds the width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

N_BOOT = 4000
LEVEL = 0.95
# With n images, a difference that is as likely + as - (no effect) lands on one side for every image
# with probability 2 * 0.5**n, and then the percentile interval excludes 0. Below 6 images that is
# over 5 %, more than the interval's own error rate: no verdict.
MIN_IMAGES = 6


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None for NaN/inf: the index is strict JSON."""
    v = float(value)
    return v if np.isfinite(v) else None


def bootstrap_mean(values: Sequence[float] | np.ndarray, seed: int = 0, n_boot: int = N_BOOT,
                   level: float = LEVEL) -> dict[str, Any]:
    """``{"mean", "low", "high", "n"}``: the mean of the finite ``values`` (one per image) and its
    expanded percentile bootstrap interval over images. No finite value: None for the numbers, n = 0."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - level) / 2
    if n > 1:  # the tail a t interval with n - 1 degrees of freedom has, on the resampled means' scale
        tail = float(stats.norm.cdf(np.sqrt(n / (n - 1)) * stats.t.ppf(tail, n - 1)))
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high), "n": n}


def side_verdict(ci: dict[str, Any], good: str, names: tuple[str, str, str]) -> str:
    """``names`` = (good side, bad side, neither) of a difference whose ``good`` side is "above" or
    "below" 0, chosen by the interval ``ci`` (``bootstrap_mean``); too few images give no verdict."""
    n = int(ci.get("n") or 0)
    if n < MIN_IMAGES:
        return f"too few images for a verdict ({n}, needs {MIN_IMAGES})"
    low, high = ci["low"], ci["high"]
    above, below = low > 0, high < 0
    if above or below:
        return names[0] if above == (good == "above") else names[1]
    return f"{names[2]} ({n} images)"


def compare(method_values: np.ndarray, reference_values: np.ndarray, good: str, names: tuple[str, str, str],
            seed: int = 0) -> dict[str, Any]:
    """Per-image values of a method and of its reference → both means, the mean difference (method
    − reference) with its interval, and the verdict. Images where either value is missing are left out."""
    a = np.asarray(method_values, dtype=np.float64)
    b = np.asarray(reference_values, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    ci = bootstrap_mean(a[ok] - b[ok], seed=seed)
    return {"method": finite_or_none(a[ok].mean()) if ok.any() else None,
            "reference": finite_or_none(b[ok].mean()) if ok.any() else None,
            "delta": ci["mean"], "low": ci["low"], "high": ci["high"], "n": ci["n"],
            "verdict": side_verdict(ci, good, names)}
