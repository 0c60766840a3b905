"""Cells that did not finish (failed or skipped), with their one-line error; absent when none."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData
from fewlabel.report.sections.section import Section, fragment


def build(data: ReportData) -> dict[str, Any] | None:
    failed = [{"strategy": r["strategy"], "n_per_class": r["n_per_class"], "repeat": r["repeat"],
               "status": r.get("status"), "error": r.get("error") or ""}
              for r in data.rows if r.get("status") != "ok"]
    return {"failed": failed} if failed else None


SECTION = Section(anchor="failed", title="Cells that did not finish", build=build,
                  template=fragment(__file__))
