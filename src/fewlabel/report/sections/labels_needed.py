"""Labels needed: per strategy, the labelled images per class that reach the target, and how it was read."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData, fit_of
from fewlabel.report.curves import PowerLaw
from fewlabel.report.label_need import BACKTEST, INTERVAL_LEVEL, MAX_EXTRAPOLATION
from fewlabel.report.sections.section import Section, fragment


def _fit_text(fit: PowerLaw | None) -> str | None:
    if fit is None:
        return None
    if fit.shift == 0:
        return f"{fit.a:.3f} − {fit.b:.3f}·n^−{fit.c:.2f}"
    return f"{fit.a:.3f} − {fit.b:.3f}·((n+{fit.shift:g})/{1 + fit.shift:g})^−{fit.c:.2f}"


def build(data: ReportData) -> dict[str, Any]:
    return {
        "targets": [{"strategy": s, "text": t.text, "how": t.how, "extrapolated": t.extrapolated,
                     "fit": _fit_text(data.fits.get(s)) or _fit_text(fit_of(t))}
                    for s, t in data.targets.items()],
        "interval_level": INTERVAL_LEVEL, "max_extrapolation": MAX_EXTRAPOLATION, "backtest": BACKTEST,
    }


SECTION = Section(anchor="target", title="Labelled images per class needed to reach {metric_label} {target}",
                  nav="Labels needed", build=build, template=fragment(__file__))
