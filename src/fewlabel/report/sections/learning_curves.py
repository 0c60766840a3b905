"""Learning curves: the chosen metric (with its fitted extrapolation and target) and accuracy."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData
from fewlabel.report.curves import METRIC_LABELS, plot_curves
from fewlabel.report.formatting import b64
from fewlabel.report.sections.section import Section, fragment


def build(data: ReportData) -> dict[str, Any]:
    metric, cmaps = data.metric, data.cmaps
    # the x axis reaches the largest extrapolated labels-needed estimate, so its curve is drawn to it
    extend = max([t.n for t in data.targets.values() if t.n and t.extrapolated] or [0.0])
    figures = []
    for m in (metric, "accuracy") if metric != "accuracy" else ("accuracy",):
        if any(cmaps[m].values()):
            main = m == metric
            figures.append({"metric": m, "label": METRIC_LABELS.get(m, m), "png": b64(plot_curves(
                cmaps[m], m, target=data.target if main else None, fits=data.fits if main else None,
                extend_to=extend if main else None))})
    return {"figures": figures}


SECTION = Section(anchor="curves", title="Learning curves", nav="Learning curves", build=build,
                  template=fragment(__file__))
