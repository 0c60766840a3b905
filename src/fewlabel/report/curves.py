"""Learning curves from the store's rows: median, IQR and a bootstrap CI of the median per size; the
labelled-set size a strategy needs to reach a target, read from its curve; and an inverse power-law
fit ``m(n) = a - b * n**(-c)`` for sizes beyond the largest one run, always marked as extrapolated.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fewlabel.evaluate.metrics import quartiles
from fewlabel.figures import plain_text, to_png

METRIC_LABELS = {"roc_auc": "ROC-AUC", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                 "macro_f1": "macro F1"}
# Beyond this multiple of the largest size run, an extrapolated need is reported as "more than".
MAX_EXTRAPOLATION = 5.0


@dataclass
class CurvePoint:
    """One strategy at one labelled-set size, over its successful repeats."""

    n_per_class: int
    values: list[float]
    median: float
    q1: float
    q3: float
    ci_low: float
    ci_high: float
    # mean over repeats, set when the CI is that of the mean from the test-groups × repeats bootstrap
    mean: float | None = None

    @property
    def n_repeats(self) -> int:
        return len(self.values)


def bootstrap_median_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of the median over repeats (NaN for no values; the value itself for one)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(meds, [alpha, 1 - alpha])
    return float(lo), float(hi)


def curves(rows: Iterable[Mapping[str, Any]], metric: str = "roc_auc", n_boot: int = 2000, seed: int = 0
           ) -> dict[str, list[CurvePoint]]:
    """Per strategy (in first-seen order), its points sorted by size; only ``ok`` rows with a value."""
    groups: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        groups.setdefault(str(row["strategy"]), {})
        value = row.get(metric)
        if row.get("status", "ok") != "ok" or value is None or not math.isfinite(float(value)):
            continue
        groups[str(row["strategy"])].setdefault(int(row["n_per_class"]), []).append(float(value))
    out: dict[str, list[CurvePoint]] = {}
    for strategy, by_size in groups.items():
        points = []
        for n in sorted(by_size):
            v = sorted(by_size[n])
            q1, med, q3 = quartiles(v)
            lo, hi = bootstrap_median_ci(v, n_boot=n_boot, seed=seed)
            points.append(CurvePoint(n, v, med, q1, q3, lo, hi))
        out[strategy] = points
    return out


@dataclass
class PowerLaw:
    """``m(n) = a - b * ((n + shift) / (1 + shift))**(-c)``: rises towards the plateau ``a`` as n
    grows; ``shift = 0`` is the plain ``a - b n^-c``."""

    a: float
    b: float
    c: float
    sizes: list[int] = field(default_factory=list)  # the sizes it was fitted on
    shift: float = 0.0

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        x = (np.asarray(n, dtype=np.float64) + self.shift) / (1.0 + self.shift)
        return self.a - self.b * np.power(x, -self.c)

    def inverse(self, target: float) -> float | None:
        """The n where the fit reaches ``target``; None when its plateau stays below it."""
        if target >= self.a or self.b <= 0 or self.c <= 0:
            return None
        return float((1.0 + self.shift) * (self.b / (self.a - target)) ** (1.0 / self.c) - self.shift)


def fit_power_law(points: Sequence[CurvePoint], upper: float = 1.0) -> PowerLaw | None:
    """Least-squares fit to the medians (scipy ``curve_fit``); needs >= 3 sizes, since it has 3
    parameters. ``upper`` bounds the plateau (1 for ROC-AUC and accuracy). None when it fails."""
    pts = [p for p in points if math.isfinite(p.median)]
    if len(pts) < 3:
        return None
    from scipy.optimize import curve_fit

    n = np.array([p.n_per_class for p in pts], dtype=np.float64)
    y = np.array([p.median for p in pts], dtype=np.float64)

    def model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a - b * np.power(x, -c)

    a0 = min(upper, float(y.max()) + 0.02)
    b0 = max(1e-3, (a0 - float(y.min())) * float(n.min()) ** 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(model, n, y, p0=(a0, b0, 0.5),
                                  bounds=([0.0, 0.0, 0.05], [upper, 100.0, 3.0]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    return PowerLaw(float(params[0]), float(params[1]), float(params[2]), sizes=[int(v) for v in n])


@dataclass
class TargetEstimate:
    """How many labelled images per class a strategy needs to reach the target, and how we know."""

    target: float
    n: float | None
    # "reached at the smallest size" | "interpolated" | "extrapolated" | "beyond range" | "not reached"
    how: str
    text: str

    @property
    def extrapolated(self) -> bool:
        return self.how in ("extrapolated", "beyond range")


def size_to_target(points: Sequence[CurvePoint], target: float, fit: PowerLaw | None = None
                   ) -> TargetEstimate:
    """Read the size off the median curve: the first crossing of ``target``, linear in log(n) between
    the two sizes around it. Past the largest size only the fit can say, and the text says so."""
    pts = [p for p in points if math.isfinite(p.median)]
    if not pts:
        return TargetEstimate(target, None, "not reached", "no successful runs")
    if pts[0].median >= target:
        n0 = pts[0].n_per_class
        return TargetEstimate(target, float(n0), "reached at the smallest size",
                              f"≤ {n0} (already reached at the smallest size run)")
    for lo, hi in zip(pts, pts[1:], strict=False):
        if lo.median < target <= hi.median:
            t = (target - lo.median) / (hi.median - lo.median)
            n = math.exp(math.log(lo.n_per_class) + t * (math.log(hi.n_per_class) - math.log(lo.n_per_class)))
            return TargetEstimate(target, n, "interpolated", f"≈ {n:.0f} (interpolated on the median curve)")
    largest = pts[-1].n_per_class
    if fit is None:
        return TargetEstimate(target, None, "not reached",
                              f"> {largest} (not reached; too few sizes to extrapolate)")
    n = fit.inverse(target)
    if n is None:
        return TargetEstimate(target, None, "not reached",
                              f"> {largest} (not reached; the fitted curve levels off at {fit.a:.3f})")
    if n > MAX_EXTRAPOLATION * largest:
        return TargetEstimate(target, n, "beyond range",
                              f"> {MAX_EXTRAPOLATION * largest:.0f} (EXTRAPOLATED fit: ≈ {n:.0f}, far beyond "
                              f"the largest size run, {largest}; not to be relied on)")
    return TargetEstimate(target, n, "extrapolated", f"≈ {n:.0f} (EXTRAPOLATED from a fitted curve "
                          f"beyond the largest size run, {largest})")


def plot_curves(curve_map: Mapping[str, Sequence[CurvePoint]], metric: str = "roc_auc",
                target: float | None = None, fits: Mapping[str, PowerLaw | None] | None = None,
                extend_to: float | None = None, dpi: int = 110) -> bytes:
    """PNG: per strategy the median (line + points), the IQR (band) and the bootstrap CI of the median
    (error bars); fitted extrapolation past the largest size dashed and labelled; the target dotted."""
    fig = Figure(figsize=(7.6, 4.0))
    ax = fig.subplots()
    ax.set_xscale("log")  # first: limits read below must be those of the log axis
    fits = fits or {}
    all_n = [p.n_per_class for pts in curve_map.values() for p in pts]
    largest = max(all_n) if all_n else 1
    for k, (strategy, pts) in enumerate(curve_map.items()):
        if not pts:
            continue
        color = f"C{k % 10}"
        n = np.array([p.n_per_class for p in pts], dtype=float)
        med = np.array([p.median for p in pts])
        ax.fill_between(n, [p.q1 for p in pts], [p.q3 for p in pts], color=color, alpha=0.15, linewidth=0)
        # error bars sit on the statistic their CI is of: the mean when set, else the median
        centre = np.array([p.mean if p.mean is not None else p.median for p in pts])
        err = np.array([[m - p.ci_low for m, p in zip(centre, pts, strict=True)],
                        [p.ci_high - m for m, p in zip(centre, pts, strict=True)]])
        ax.plot(n, med, color=color, marker="o", ms=4, linewidth=1.6, label=plain_text(strategy))
        ax.errorbar(n, centre, yerr=np.clip(err, 0, None), color=color, fmt="none", capsize=3, linewidth=1.0)
        fit = fits.get(strategy)
        if fit is not None:
            hi = max(largest * 2.0, extend_to or 0.0)
            xs = np.geomspace(n.max(), min(hi, MAX_EXTRAPOLATION * largest), 40)
            ax.plot(xs, fit(xs), color=color, linestyle="--", linewidth=1.2, alpha=0.9)
    if any(f is not None for f in fits.values()):
        ax.plot([], [], color="0.3", linestyle="--", label="extrapolated (fit a − b·n^−c)")
        ax.axvspan(largest, ax.get_xlim()[1], color="0.92", zorder=0)
        ax.text(largest * 1.05, 0.98, "extrapolated", transform=ax.get_xaxis_transform(), fontsize=8,
                color="0.35", va="top")
    if target is not None:
        ax.axhline(target, color="0.4", linestyle=":", linewidth=1)
        ax.text(0.01, target, f"target {target:g}", transform=ax.get_yaxis_transform(), fontsize=8,
                color="0.3", va="bottom")
    ticks = sorted(set(all_n))
    right = ax.get_xlim()[1]
    if any(f is not None for f in fits.values()) and right > 1.5 * largest:
        ticks.append(int(round(right)))  # one tick in the extrapolated part, so its scale can be read
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("labelled images per class (log scale)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(True, alpha=0.3)
    # Outside the axes: inside, the legend would hide points of some curve or the extrapolation.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return to_png(fig, dpi=dpi)
