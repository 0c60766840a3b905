"""Results per patient: shown only when some test patient (group) has several images."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData
from fewlabel.report.curves import METRIC_LABELS
from fewlabel.report.patients import patient_table
from fewlabel.report.sections.section import Section, fragment


def build(data: ReportData) -> dict[str, Any] | None:
    if not data.rows:
        return None
    table = patient_table(data.view, data.rows, data.strategies, n_boot=data.n_boot, seed=data.seed)
    return None if table is None else {"patients": table, "metric_labels": METRIC_LABELS}


SECTION = Section(anchor="patients", title="Results per patient", nav="Per patient", build=build,
                  template=fragment(__file__))
