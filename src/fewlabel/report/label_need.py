"""How many labelled images per class reach a target value of the metric — with an interval, a cap on
extrapolation, and a refusal to fit curves that do not behave like learning curves.

The curve model is the inverse power law ``m(n) = a - b * n**(-c)`` (Figueroa et al. 2012), fitted
by weighted least squares: each size weighs by the inverse of its bootstrap variance (test groups ×
repeats), so noisy small sizes do not dominate. Two constraints keep it a learning curve: the plateau
``a`` is at most the metric's maximum, and ``m(1) = a - b`` is at least chance (a floor: the curve
never predicts worse than guessing). For a fixed exponent ``c`` the model is linear in ``(a, b)``, so
the fit is an exact constrained weighted least squares on a grid of ``c`` — fast enough to refit
every bootstrap resample, which is where the interval comes from. The fit also takes a grid of shifts
``d`` (``m(n) = a - b ((n + d) / (1 + d))**(-c)``, a curve lagging its power law at the smallest
sizes) and another exponent grid; the defaults are the plain law, for the reason below.

A target already reached on the measured curve is read off it (linear in log n between the two sizes
around it); the interval then comes from the resampled curves. Past the largest size run, the fit
answers only up to ``MAX_EXTRAPOLATION`` times that size, and refuses beyond.

The interval past the largest size is a percentile interval of the refitted inverse over the
resamples: its upper end at the 95th percentile, its lower end at the ``LOWER_TAIL`` percentile.
Percentiles follow any monotone reparametrisation, so the interval does not depend on whether the
curve is parametrised by its plateau, its exponent or the size itself; a resample whose curve never
reaches the target sorts above every size, so the upper end is "open above the cap" exactly when more
than 5% of resamples put the need past the cap.

The lower end is calibrated, not symmetric. On simulated curves with a known answer
(``report.curve_simulation``, bootstrapped as a run's are; ``benchmarks/label_need_calibration.py``)
that follow the fitted power law itself, the symmetric 5th percentile lay above the true need in
8-9% of cases against a nominal 5%. ``--calibrate`` there finds the largest lower tail that
misses at most 5% on power-law curves with 95% confidence, on seeds the quoted table does not use.
That table (``report.label_need_coverage``, which the report quotes) counts closed, open and missed
intervals separately, for power laws and for curves that are not. Curves that lag a power law at
their smallest sizes (a late start: a later elbow) are extrapolated too high, and their interval
misses below far more often than 5%; the report says so.

The same benchmark (``--alternatives``, 144 curves, seed 0) measures other constructions. On power
laws Efron's bias-corrected percentile missed below in 6% and above in 4% (this interval: 4% and
3%), and a profile likelihood-ratio interval with a bootstrap-calibrated threshold 7% and 1% while
closing fewer intervals (14% against 22%). Shifted curves ``a - b ((n + d) / (1 + d))**(-c)``, d in
0, 1, 2, 4, with the exponent bounded by 1 (the 1/n rate), can express a late start: on late-start
curves (d = 2) they missed below in 3% where this interval misses in a third. But they missed above
in 58% of curves steeper than 1/n (c = 1.5), and on real curves
(``benchmarks/label_need_backtest.py``, counting open intervals as hits as that run did) they
covered no more often than the plain law; so the plain law stays, and the report names its blind
spot.

Such an interval is often open above the cap, and mostly that is the data speaking: from a handful
of sizes between 1 and 10 per class, a curve that levels off just above the target and one that
keeps rising fit equally well within the noise, and the inverse n(target) is steep where a curve is
flat. Much of that noise is the test set's (which patients happen to be in it), which shifts every
size's value together and so moves the plateau; the interval includes it because the question is
about the population, not this test set. Intervals close when the target lies near the largest size
run: running one larger size narrows the answer more than any interval construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fewlabel.report.run_data import CurveBootstrap

# An estimate past this multiple of the largest size run is refused ("more than ..."), not given.
MAX_EXTRAPOLATION = 5.0
INTERVAL_LEVEL = 0.90
EXPONENTS = np.geomspace(0.05, 3.0, 80)
# How many labelled images per class a curve may lag behind its power law: 0 alone is the plain law.
# The benchmarks measure shifted families side by side; the module docstring says why 0 alone.
SHIFTS: tuple[float, ...] = (0.0,)
MIN_SIZES_TO_FIT = 3
# The lower end's percentile: the symmetric 5% missed about 9% on simulated power-law curves; this one
# is what ``benchmarks/label_need_calibration.py --calibrate --seeds 100 --cases 864 --n-boot 1000``
# found to miss at most 5% there with 95% confidence. Re-run it, then ``--write``, when the fit changes.
LOWER_TAIL = 0.02


def _basis(sizes: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``((n + d) / (1 + d)) ** -c``: 1 at n = 1 whatever the shift, so ``a - b`` is always m(1)."""
    return np.power((sizes + d) / (1.0 + d), -c)


@dataclass
class CurveFit:
    """``m(n) = a - b * ((n + d) / (1 + d))**(-c)`` per row (the point curve first, then each
    resample); ``d = 0`` is the plain power law ``a - b n^-c``."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray

    def inverse(self, target: float) -> np.ndarray:
        """n reaching ``target`` per row; inf where the plateau stays at or below it."""
        with np.errstate(divide="ignore", invalid="ignore"):
            n = (1.0 + self.d) * np.power(self.b / (self.a - target), 1.0 / self.c) - self.d
        n = np.where((self.a > target) & (self.b > 0), n, np.inf)
        return np.where(np.isfinite(n), np.maximum(n, 1.0), np.inf)

    def __call__(self, n: np.ndarray | float, row: int = 0) -> np.ndarray:
        x = _basis(np.asarray(n, dtype=np.float64), self.c[row], self.d[row])
        return self.a[row] - self.b[row] * x


def fit_curves(sizes: np.ndarray, values: np.ndarray, weights: np.ndarray, chance: float, upper: float = 1.0,
               shifts: tuple[float, ...] = SHIFTS, exponents: np.ndarray = EXPONENTS) -> CurveFit:
    """Constrained weighted least squares of ``values`` (rows, S) at ``sizes`` (S,), one fit per row,
    over the grid of exponents × ``shifts``.

    Constraints: ``b >= 0``, ``a <= upper``, ``a - b >= chance``. For each (exponent, shift) the best
    of the unconstrained solution (when feasible) and the best point on each constraint is kept."""
    y = np.atleast_2d(np.asarray(values, dtype=np.float64))[:, None, :]  # (R, 1, S)
    w = np.asarray(weights, dtype=np.float64)[None, None, :]
    grid_c = np.repeat(np.asarray(exponents, dtype=np.float64), len(shifts))
    grid_d = np.tile(np.asarray(shifts, dtype=np.float64), len(exponents))
    x = _basis(np.asarray(sizes, dtype=np.float64)[None, :], grid_c[:, None], grid_d[:, None])[None]  # 1,K,S
    sw, swx, swxx = w.sum(-1), (w * x).sum(-1), (w * x * x).sum(-1)
    swy, swxy = (w * y).sum(-1), (w * x * y).sum(-1)
    det = sw * swxx - swx**2
    with np.errstate(divide="ignore", invalid="ignore"):
        # y = a - b x  <=>  y = a + beta x with beta = -b
        a_free = (swxx * swy - swx * swxy) / det
        b_free = -(sw * swxy - swx * swy) / det
        a_flat = np.clip(swy / sw, chance, upper)
        b_top = np.clip((swx * upper - swxy) / swxx, 0.0, upper - chance)
        u = 1.0 - x  # on the floor a - b = chance: y - chance x = a (1 - x)
        a_floor = np.clip((w * u * (y - chance * x)).sum(-1) / (w * u * u).sum(-1), chance, upper)
    shape = (y.shape[0], len(grid_c))
    a_free, b_free, a_flat, b_top, a_floor = (np.broadcast_to(v, shape).copy()
                                              for v in (a_free, b_free, a_flat, b_top, a_floor))
    candidates = [
        (a_flat, np.zeros_like(a_flat)),
        (np.full_like(a_flat, upper), b_top),
        (a_floor, a_floor - chance),
    ]
    feasible = (b_free >= 0) & (a_free <= upper) & (a_free - b_free >= chance - 1e-12) & np.isfinite(a_free)
    candidates.append((np.where(feasible, a_free, np.nan), np.where(feasible, b_free, np.nan)))
    best_a = best_b = best_sse = None
    for a, b in candidates:
        sse = (w * (y - (a[..., None] - b[..., None] * x)) ** 2).sum(-1)
        sse = np.where(np.isfinite(sse), sse, np.inf)
        if best_sse is None:
            best_a, best_b, best_sse = a.copy(), b.copy(), sse
        else:
            better = sse < best_sse
            best_a, best_b, best_sse = (np.where(better, a, best_a), np.where(better, b, best_b),
                                        np.where(better, sse, best_sse))
    k = best_sse.argmin(axis=1)
    rows = np.arange(best_sse.shape[0])
    return CurveFit(a=best_a[rows, k], b=best_b[rows, k], c=grid_c[k], d=grid_d[k])


def observed_need(sizes: np.ndarray | list[int], values: np.ndarray, target: float) -> float | None:
    """First crossing of ``target`` on a measured curve, linear in log n; None when never reached."""
    sizes = np.asarray(sizes, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values[0] >= target:
        return float(sizes[0])
    for i in range(1, len(values)):
        if values[i - 1] < target <= values[i]:
            t = (target - values[i - 1]) / (values[i] - values[i - 1])
            return float(math.exp(math.log(sizes[i - 1]) + t * (math.log(sizes[i]) - math.log(sizes[i - 1]))))
    return None


def curve_shape(curve: CurveBootstrap) -> str | None:
    """None for a learning curve fit to model; else why not: "non-monotone" (a drop larger than twice
    its bootstrap SD between two sizes) or "flat" (no rise beyond twice its SD from first to last size)."""
    p, boot = curve.point, curve.boot
    for i in range(len(p) - 1):
        sd = np.nanstd(boot[:, i + 1] - boot[:, i])
        if p[i + 1] < p[i] - max(2 * sd, 0.005):
            return "non-monotone"
    sd = np.nanstd(boot[:, -1] - boot[:, 0])
    if p[-1] - p[0] < max(2 * sd, 0.01):
        return "flat"
    return None


@dataclass
class NeedEstimate:
    """Labelled images per class for a target: point, interval (None = open), and how we know."""

    target: float
    n: float | None
    low: float | None
    high: float | None
    # "measured" | "extrapolated" | "beyond cap" | "not reached" | "ill-behaved" | "too few sizes"
    how: str
    text: str
    fit: CurveFit | None = None
    shape: str | None = None

    @property
    def extrapolated(self) -> bool:
        return self.how in ("extrapolated", "beyond cap")


def _interval(values: np.ndarray, cap: float | None, level: float, lower_tail: float | None = None
              ) -> tuple[float | None, float | None]:
    """Percentiles of the resampled needs: the upper end at ``1 - (1 - level) / 2``, the lower end at
    ``lower_tail`` (default: the symmetric ``(1 - level) / 2``)."""
    v = np.where(np.isfinite(values), values, np.inf)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(v, [alpha if lower_tail is None else lower_tail, 1 - alpha], method="inverted_cdf")
    low = None if not np.isfinite(lo) or (cap is not None and lo > cap) else float(lo)
    high = None if not np.isfinite(hi) or (cap is not None and hi > cap) else float(hi)
    return low, high


def _span(low: float | None, high: float | None, open_above: float) -> str:
    if low is None:
        return f"interval above {open_above:.0f}"
    return f"{INTERVAL_LEVEL:.0%} interval {low:.0f}–{high:.0f}" if high is not None else (
        f"{INTERVAL_LEVEL:.0%} interval {low:.0f} to more than {open_above:.0f}")


def estimate_need(curve: CurveBootstrap, target: float, chance: float, upper: float = 1.0,
                  cap: float = MAX_EXTRAPOLATION, level: float = INTERVAL_LEVEL,
                  shifts: tuple[float, ...] = SHIFTS, exponents: np.ndarray = EXPONENTS,
                  lower_tail: float | None = None) -> NeedEstimate:
    """The labels-needed answer for one strategy's bootstrapped curve (sizes per class)."""
    sizes = np.asarray(curve.sizes, dtype=np.float64)
    ok = np.isfinite(curve.point)
    if not ok.any():
        return NeedEstimate(target, None, None, None, "not reached", "no successful runs")
    if not ok.all():
        curve = curve.subset(ok)
        sizes = sizes[ok]
    largest, limit = float(sizes[-1]), cap * float(sizes[-1])
    measured = observed_need(sizes, curve.point, target)
    if measured is not None:
        reps = np.array([observed_need(sizes, row, target) or np.inf for row in curve.boot])
        low, high = _interval(reps, None, level)
        if measured <= sizes[0]:
            return NeedEstimate(target, measured, None, None, "measured",
                                f"≤ {sizes[0]:.0f} (reached at the smallest size run)")
        return NeedEstimate(target, measured, low, high, "measured",
                            f"≈ {measured:.0f} ({_span(low, high, largest)}; read off the measured curve)")
    if len(sizes) < MIN_SIZES_TO_FIT:
        return NeedEstimate(target, None, None, None, "too few sizes",
                            f"> {largest:.0f} (not reached; too few sizes to extrapolate)")
    shape = curve_shape(curve)
    if shape is not None:
        return NeedEstimate(target, None, None, None, "ill-behaved",
                            f"> {largest:.0f} (not reached; the curve is {shape}, so no curve is fitted "
                            "to extrapolate it)", shape=shape)
    var = np.nanvar(curve.boot, axis=0)
    weights = 1.0 / np.maximum(var, 1e-6)
    values = np.vstack([curve.point[None], np.nan_to_num(curve.boot, nan=chance)])
    fit = fit_curves(sizes, values, weights, chance=chance, upper=upper, shifts=shifts, exponents=exponents)
    ns = fit.inverse(target)
    n = float(ns[0])
    low, high = _interval(ns[1:], limit, level, LOWER_TAIL if lower_tail is None else lower_tail)
    if not math.isfinite(n):
        return NeedEstimate(target, None, low, None, "not reached",
                            f"> {largest:.0f} (not reached; the fitted curve levels off at {fit.a[0]:.3f}"
                            + (f"; {level:.0%} interval from {low:.0f} up" if low is not None else "") + ")",
                            fit=fit)
    if n > limit:
        return NeedEstimate(target, None, low, None, "beyond cap",
                            f"> {limit:.0f} (the fit points past {cap:g}× the largest size run, "
                            f"{largest:.0f}: not estimated)", fit=fit)
    return NeedEstimate(target, n, low, high, "extrapolated",
                        f"≈ {n:.0f} ({_span(low, high, limit)}; EXTRAPOLATED by a weighted fit beyond the "
                        f"largest size run, {largest:.0f})", fit=fit)


# What benchmarks/label_need_backtest.py measured (quoted by the report's "how good is this estimate"):
# a measurement with the command, grid and scope that made it, to be re-measured when the estimator
# changes. The report names what it covers and says when a run's metric, strategy or image size is not.
BACKTEST: dict[str, object] | None = {
    "command": "benchmarks/label_need_backtest.py --seeds 0,1,2,3,4,5 --targets 5",
    "metric": "roc_auc",
    "strategies": ("scratch",),
    "image_size": 32,
    "data": "PBC-8 and BCCD, two blood-cell sets",
    "text": (
        "A backtest measured it for ROC-AUC of the scratch strategy at 32 px, on two blood-cell sets "
        "(benchmarks/label_need_backtest.py --seeds 0,1,2,3,4,5 --targets 5; reduced grid: 15 epochs, 6 "
        "repeats, 6 test splits each of PBC-8 and BCCD). Fitted on the smaller sizes only (PBC ≤ 10, "
        "BCCD ≤ 4 per class) and asked for 5 targets per curve that the larger sizes reached (1.1 to 3.4 "
        "times the largest size fitted), it estimated 41 of 60 cases with a median relative error of 23% "
        "(35% counting the 19 it declined as misses; a plain unweighted power-law fit to the medians: 31% "
        "over the 48 it estimated; worst cases seen: +206% and -41%). Its intervals contained the truth "
        "in 51 of 60 cases, counting an interval open above the extrapolation cap (\"more than\") as "
        "containing it; only 13 of the 60 were closed below the cap, and the split of the 51 between "
        "closed and open ones was not recorded. Of the 9 misses, 4 were on one PBC curve that slowed "
        "down more than any power law fitted to its small sizes and 5 on a BCCD curve whose small sizes "
        "rose too little beyond their noise to be fitted (no interval). Much of the intervals' width is "
        "the test set's own sampling noise, which this backtest's truth shares (with the test set held "
        "fixed: 50 of 60 contained, 23 closed). Sixty targets on twelve curves pin the coverage down only "
        "loosely. It was measured with the previous lower end (the 5th percentile); the present one lies "
        "lower, which can only turn misses below into hits."),
}
