"""Explanations: per explained cell its attribution grid, t-SNE and the checks of each method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fewlabel.experiments.run_view import RunView
from fewlabel.report.analysis import ReportData
from fewlabel.report.formatting import b64, num
from fewlabel.report.sections.section import Section, fragment

# The verdicts said against a method: shown in the warning colour.
_BAD = ("worse than random", "keeps image structure", "less inside the masks than their area")


def _signed(value: Any, digits: int) -> str:
    """A difference with its sign; one too small for ``digits`` decimals in scientific notation, since
    an interval can exclude 0 however small the difference is, and "+0.000" would hide which side."""
    text = num(value, digits)
    if text == "—":
        return text
    v = float(value)
    if v != 0 and abs(v) < 0.5 * 10.0 ** -digits:
        return f"{v:+.1e}"
    return text if text.startswith("-") else f"+{text}"


def _interval(c: Mapping[str, Any] | None, key: str = "delta", digits: int = 3) -> str:
    """"+0.123 [+0.050, +0.190]" for a difference, or a plain value with its interval."""
    if not c:
        return "—"
    fmt = _signed if key == "delta" else num
    return f"{fmt(c.get(key), digits)} [{fmt(c.get('low'), digits)}, {fmt(c.get('high'), digits)}]"


def _verdict(c: Mapping[str, Any] | None) -> dict[str, Any]:
    text = str((c or {}).get("verdict") or "—")
    return {"text": text, "bad": text in _BAD}


def _check_row(method: str, c: Mapping[str, Any]) -> dict[str, Any]:
    rand = c.get("randomisation") or {}
    stages = rand.get("stages") or []
    diff = rand.get("difference") or {}
    mask = c.get("mask")
    faith = {k: {"value": _interval(c.get(k)), "reference": num((c.get(k) or {}).get("reference")),
                 "verdict": _verdict(c.get(k))} for k in ("deletion", "insertion", "aopc")}
    last = _interval(stages[-1], "mean", 2) if stages else "—"
    return {
        "method": method, "n": c.get("n_images"), "faith": list(faith.values()),
        "deletion": faith["deletion"]["value"], "insertion": faith["insertion"]["value"],
        "aopc": faith["aopc"]["value"], "randomisation": last,
        "first": _interval(stages[0], "mean", 2) if stages else "—",
        "first_block": stages[0].get("randomised") if stages else None,
        "last": last,
        "other": _interval(rand.get("other_image"), "mean", 2),
        "curve": " → ".join(num(s.get("mean"), 2) for s in stages),
        "stages": len(stages),
        "rand_difference": _interval(diff, "delta", 2),
        "rand_verdict": _verdict(rand),
        "mask": None if not mask else {"inside": num(mask.get("inside"), 2), "area": num(mask.get("area"), 2),
                                       "difference": _interval(mask.get("difference"), "delta", 2),
                                       "verdict": _verdict(mask.get("difference"))},
        "failures": list(c.get("failures") or []),
    }


def _explanations(view: RunView, index: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not index:
        return []
    out = []
    for cell in sorted(index.get("cells", []), key=lambda c: (c["strategy"], int(c["n_per_class"]))):
        checks = cell.get("checks") or {}
        # An index written before the checks had intervals holds bare numbers: not shown as if current.
        current = all(isinstance(c.get("deletion"), Mapping) for c in checks.values())
        skipped = [f"{m} left out: {why}" for m, why in (cell.get("skipped_methods") or {}).items()]
        entry = {"strategy": cell["strategy"], "n_per_class": cell["n_per_class"],
                 "repeat": cell.get("repeat", 0), "notes": [*cell.get("lrp_notes", []), *skipped],
                 "input": cell.get("input"), "stale_checks": bool(checks) and not current,
                 "checks": [_check_row(m, c) for m, c in checks.items()] if current else []}
        entry["has_mask"] = any(r["mask"] is not None for r in entry["checks"])
        for key in ("grid", "tsne"):
            path = view.root / cell[key] if cell.get(key) else None
            entry[key] = b64(path.read_bytes()) if path is not None and path.is_file() else None
        out.append(entry)
    return out


def build(data: ReportData) -> dict[str, Any]:
    from fewlabel.explain import checks, intervals

    index = data.explanations or {}
    return {"explanations": _explanations(data.view, data.explanations),
            "explain_examples": index.get("examples", []), "explain_errors": index.get("errors", []),
            "explain_check_images": index.get("check_images"), "explain_error": data.explain_error,
            "explain_params": {"steps": checks.STEPS, "orders": checks.RANDOM_ORDERS,
                               "regions": checks.REGIONS_PER_SIDE, "aopc_share": checks.AOPC_SHARE,
                               "min_images": intervals.MIN_IMAGES}}


SECTION = Section(anchor="explain", title="Explanations: where the models look", nav="Explanations",
                  build=build, template=fragment(__file__))
