"""Labels needed: per strategy, the labelled images per class that reach the target, and how it was read.

What the section says of the estimate's quality is only what was measured: the backtest, named with
its metric, strategy, image size and data, and a sentence for what of this run it does not cover; and
the simulated coverage of ``report.label_need_coverage``, for power-law curves and for curves that
are not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fewlabel.report import label_need_coverage as coverage
from fewlabel.report.analysis import ReportData, fit_of
from fewlabel.report.curves import METRIC_LABELS, PowerLaw
from fewlabel.report.label_need import BACKTEST, INTERVAL_LEVEL, LOWER_TAIL, MAX_EXTRAPOLATION
from fewlabel.report.sections.section import Section, fragment

NOT_COVERED = "The backtest does not cover"


def _fit_text(fit: PowerLaw | None) -> str | None:
    if fit is None:
        return None
    if fit.shift == 0:
        return f"{fit.a:.3f} − {fit.b:.3f}·n^−{fit.c:.2f}"
    return f"{fit.a:.3f} − {fit.b:.3f}·((n+{fit.shift:g})/{1 + fit.shift:g})^−{fit.c:.2f}"


def _image_size(dataset: Mapping[str, Any]) -> int | str | None:
    """The run's image size as the backtest names its own: one number for a square (or cube) image."""
    size = dataset.get("image_size")
    if isinstance(size, int):
        return size
    if isinstance(size, Sequence) and size and all(isinstance(s, int) for s in size):
        return size[0] if len(set(size)) == 1 else "×".join(map(str, size))
    return None


def _ordinal(percent: float) -> str:
    n = f"{percent:g}"
    last = n[-1] if not n.endswith(("11", "12", "13")) else ""
    return n + {"1": "st", "2": "nd", "3": "rd"}.get(last, "th")


def backtest_scope(backtest: Mapping[str, Any] | None, metric: str, strategies: Sequence[str],
                   image_size: int | str | None, bootstrap: bool = True) -> str | None:
    """One sentence: what of this report the backtest measured, or which of its metric, strategies,
    image size and estimator it does not cover (then its figures say nothing about them)."""
    if backtest is None:
        return None
    label = METRIC_LABELS.get(metric, metric)
    measured = set(backtest["strategies"])
    gaps = []
    if not bootstrap:
        gaps.append("this run's estimate, made without per-image test results (it measured the "
                    "estimate from test groups × repeats)")
    if metric != backtest["metric"]:
        gaps.append(f"this report's metric, {label} (it measured "
                    f"{METRIC_LABELS.get(backtest['metric'], backtest['metric'])})")
    if others := [s for s in strategies if s not in measured]:
        gaps.append(f"the strateg{'y' if len(others) == 1 else 'ies'} {', '.join(others)} (it measured "
                    f"{', '.join(backtest['strategies'])} only)")
    if image_size is None:
        gaps.append(f"this run's image size, which it does not record (it measured "
                    f"{backtest['image_size']} px)")
    elif image_size != backtest["image_size"]:
        gaps.append(f"this run's {image_size} px images (it measured {backtest['image_size']} px)")
    if gaps:
        return f"{NOT_COVERED} " + "; nor ".join(gaps) + ": the estimate's error there has not been measured."
    return (f"This report's metric, strateg{'y' if len(strategies) == 1 else 'ies'} and image size are the "
            f"ones the backtest measured, on other data ({backtest['data']}).")


def _share(row: Mapping[str, Any], key: str) -> str:
    return f"{row[key] / row['cases']:.0%}"


def coverage_sentences(module: Any = coverage) -> list[str]:
    """The simulated coverage, as measured (``report.label_need_coverage``): every outcome apart,
    for curves that follow the fitted power law and for the two families that do not."""
    rows = {(r["family"], r["strength"]): r for r in module.ROWS}
    well = rows.get(("power law", 0.0))
    if well is None:
        return []
    level = f"{module.INTERVAL_LEVEL:.0%}"
    out = [
        f"On simulated curves with a known answer ({module.CASES} per kind of curve, the true need "
        f"{module.RATIOS[0]:g} to {module.RATIOS[-1]:g} times the largest size run; "
        f"{module.COMMAND}, seeds {', '.join(map(str, module.SEEDS))}): where the true curve is the "
        f"power law fitted here, the {level} interval was closed and contained the truth in "
        f"{_share(well, 'covered')} of cases, was open above the cap with the truth at or above its lower "
        f"end in {_share(well, 'open')} (right, but only as \"more than\"), and missed below in "
        f"{_share(well, 'missed low')} and above in {_share(well, 'missed high')} (each end's nominal "
        f"rate: 5%; with the lower end at the symmetric 5th percentile it had missed below in "
        f"{_share(well, 'missed low, 5th percentile')})."]
    for family, intro, then in (
            ("late start", "Where the true curve starts late — it lags its power law at the smallest "
             "sizes, a − b·(n + d)^−c, a later elbow — the estimate comes out too high and the interval "
             "missed below in", "d"),
            ("slowing", "Where the true curve slows — its exponent decays as c·n^−δ, approaching the "
             "plateau more slowly than its small sizes suggest — the interval missed below in", "δ")):
        fam = sorted((r for (f, _), r in rows.items() if f == family), key=lambda r: r["strength"])
        if not fam:
            continue
        strengths = ", ".join(f"{r['strength']:g}" for r in fam)
        out.append(
            f"{intro} {', '.join(_share(r, 'missed low') for r in fam)} and above in "
            f"{', '.join(_share(r, 'missed high') for r in fam)} of cases at {then} = {strengths} "
            f"(closed and containing the truth: {', '.join(_share(r, 'covered') for r in fam)}; open: "
            f"{', '.join(_share(r, 'open') for r in fam)})"
            + (": the interval is not calibrated for such curves, and a real curve may be one." if any(
                max(r["missed low"], r["missed high"]) / r["cases"] > 0.075 for r in fam) else "."))
    return out


def build(data: ReportData) -> dict[str, Any]:
    strategies = list(data.targets) or list(data.strategies)
    scope = backtest_scope(BACKTEST, data.metric, strategies, _image_size(data.dataset),
                           bootstrap=data.bootstrap is not None)
    return {
        "targets": [{"strategy": s, "text": t.text, "how": t.how, "extrapolated": t.extrapolated,
                     "fit": _fit_text(data.fits.get(s)) or _fit_text(fit_of(t))}
                    for s, t in data.targets.items()],
        "interval_level": INTERVAL_LEVEL, "max_extrapolation": MAX_EXTRAPOLATION,
        "upper_percentile": _ordinal(round((1 + INTERVAL_LEVEL) / 2 * 100, 1)),
        "lower_percentile": _ordinal(round(LOWER_TAIL * 100, 1)),
        "backtest": BACKTEST,
        "backtest_scope": scope, "backtest_not_covered": bool(scope and scope.startswith(NOT_COVERED)),
        "simulated": coverage_sentences() if data.bootstrap is not None else [],
    }


SECTION = Section(anchor="target", title="Labelled images per class needed to reach {metric_label} {target}",
                  nav="Labels needed", build=build, template=fragment(__file__))
