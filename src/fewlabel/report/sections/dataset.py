"""Data: the classes and their counts (all, training pool, test set), and how the split was made."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData
from fewlabel.report.sections.section import Section, fragment


def cell_notes(rows: list[dict]) -> dict[str, list[str]]:
    """Per strategy, the distinct notes its cells recorded (what an encoder file is and what it saw,
    crops that fell back to the whole image, ...), in the order first met."""
    out: dict[str, list[str]] = {}
    for row in rows:
        notes = (row.get("extra") or {}).get("notes") or []
        kept = out.setdefault(str(row.get("strategy")), [])
        kept.extend(n for n in map(str, notes) if n not in kept)
    return {k: v for k, v in out.items() if v}


def build(data: ReportData) -> dict[str, Any]:
    return {"dataset": data.dataset, "classes": data.classes, "cell_notes": cell_notes(data.rows)}


SECTION = Section(anchor="data", title="Data", nav="Data", build=build, template=fragment(__file__))
