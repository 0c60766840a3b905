"""Confusion matrices: one per strategy, repeat 0 (or the lowest that finished) at its largest size."""

from __future__ import annotations

from typing import Any

from fewlabel.report.analysis import ReportData
from fewlabel.report.sections.section import Section, fragment


def _confusions(rows: list[dict], classes: list[str], strategies: list[str]) -> list[dict[str, Any]]:
    """Repeat 0 (or the lowest successful repeat) at the largest size each strategy finished."""
    out = []
    for s in strategies:
        ok = [r for r in rows if r["strategy"] == s and r.get("status") == "ok" and r.get("confusion_matrix")]
        if not ok:
            continue
        n = max(int(r["n_per_class"]) for r in ok)
        r = min((r for r in ok if int(r["n_per_class"]) == n), key=lambda r: int(r["repeat"]))
        matrix = [[int(v) for v in row] for row in r["confusion_matrix"]]
        names = classes if len(classes) == len(matrix) else [f"class {i}" for i in range(len(matrix))]
        cells = []
        for i, row in enumerate(matrix):
            total = sum(row) or 1
            cells.append([{"count": v, "frac": v / total, "diag": i == j,
                           "alpha": f"{0.08 + 0.72 * v / total:.2f}"} for j, v in enumerate(row)])
        out.append({"strategy": s, "n_per_class": n, "repeat": int(r["repeat"]), "classes": names,
                    "rows": cells})
    return out


def build(data: ReportData) -> dict[str, Any]:
    return {"confusions": _confusions(data.rows, data.classes, data.strategies)}


SECTION = Section(anchor="confusion", title="Confusion matrices", nav="Confusion", build=build,
                  template=fragment(__file__))
