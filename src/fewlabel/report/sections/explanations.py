"""Explanations: per explained cell its attribution grid, t-SNE and the checks of each method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fewlabel.experiments.run_view import RunView
from fewlabel.report.analysis import ReportData
from fewlabel.report.formatting import b64, num
from fewlabel.report.sections.section import Section, fragment


def _explanations(view: RunView, index: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not index:
        return []
    out = []
    for cell in sorted(index.get("cells", []), key=lambda c: (c["strategy"], int(c["n_per_class"]))):
        entry = {"strategy": cell["strategy"], "n_per_class": cell["n_per_class"],
                 "repeat": cell.get("repeat", 0), "notes": cell.get("lrp_notes", []),
                 "input": cell.get("input"),
                 "checks": [{"method": m, "deletion": num(c.get("deletion")),
                             "deletion_random": num(c.get("deletion_random")),
                             "insertion": num(c.get("insertion")),
                             "insertion_random": num(c.get("insertion_random")),
                             "randomisation": num(c.get("randomisation_similarity"), 2),
                             "mask": (f"{num(c.get('mask_inside'), 2)} (area {num(c.get('mask_area'), 2)})"
                                      if "mask_inside" in c else None),
                             "failures": list(c.get("failures") or [])}
                            for m, c in (cell.get("checks") or {}).items()]}
        for key in ("grid", "tsne"):
            path = view.root / cell[key] if cell.get(key) else None
            entry[key] = b64(path.read_bytes()) if path is not None and path.is_file() else None
        out.append(entry)
    return out


def build(data: ReportData) -> dict[str, Any]:
    index = data.explanations or {}
    return {"explanations": _explanations(data.view, data.explanations),
            "explain_examples": index.get("examples", []), "explain_errors": index.get("errors", []),
            "explain_error": data.explain_error}


SECTION = Section(anchor="explain", title="Explanations: where the models look", nav="Explanations",
                  build=build, template=fragment(__file__))
