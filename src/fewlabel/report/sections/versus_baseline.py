"""Each strategy against the baseline, paired per size, with Holm-adjusted p-values."""

from __future__ import annotations

import math
from typing import Any

from fewlabel.evaluate.cluster_bootstrap import MIN_REPEATS_FOR_VERDICT
from fewlabel.report.analysis import ReportData
from fewlabel.report.formatting import num, pvalue
from fewlabel.report.paired import MIN_PAIRS_FOR_WILCOXON
from fewlabel.report.sections.section import Section, fragment


def build(data: ReportData) -> dict[str, Any]:
    return {
        "paired": [{**p, "mean_diff_s": f"{p['mean_diff']:+.3f}" if math.isfinite(p["mean_diff"]) else "—",
                    "ci_s": f"{num(p['ci_low'])} to {num(p['ci_high'])}", "p_s": pvalue(p["p_value"]),
                    "p_holm_s": pvalue(p.get("p_holm"))}
                   for p in data.paired],
        "min_pairs": MIN_PAIRS_FOR_WILCOXON,
        "min_verdict": MIN_REPEATS_FOR_VERDICT,
    }


SECTION = Section(anchor="paired", title="Each strategy against {baseline}, paired ({metric_label})",
                  nav="vs {baseline}", build=build, template=fragment(__file__))
