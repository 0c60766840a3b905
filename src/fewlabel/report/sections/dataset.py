"""Data: the classes and their counts (all, training pool, test set), and how the split was made."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData
from fewlabel.report.sections.section import Section, fragment


def build(data: ReportData) -> dict[str, Any]:
    return {"dataset": data.dataset, "classes": data.classes}


SECTION = Section(anchor="data", title="Data", nav="Data", build=build, template=fragment(__file__))
