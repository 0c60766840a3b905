"""Results per labelled-set size: one table per size, every headline metric per strategy."""

from __future__ import annotations

from typing import Any

from fewlabel.evaluate.metrics import classification_metrics
from fewlabel.report.analysis import METRICS, ReportData, point_at
from fewlabel.report.curves import METRIC_LABELS, CurvePoint
from fewlabel.report.formatting import num
from fewlabel.report.run_data import RunBootstrap
from fewlabel.report.sections.section import Section, fragment


def _train_val(cells: list[dict]) -> str:
    """How many images trained and validated (all classes), e.g. "16 + 4" — at small n the protocol
    changes (no validation below 5 labelled groups per class), so the table says what each cell used."""
    pairs = sorted({(r.get("n_train"), r.get("n_val")) for r in cells if r.get("n_train") is not None})
    if not pairs:
        return "—"
    text = [f"{t} + {v or 0}" for t, v in pairs]
    return text[0] if len(text) == 1 else f"{text[0]} … {text[-1]}"


def _cell_cis(rb: RunBootstrap | None, n_boot: int = 1000) -> dict[tuple[str, int], str]:
    """(strategy, size) → the lowest repeat's ROC-AUC test-set CI, class-stratified (over groups),
    with the number of resamples it used."""
    if rb is None:
        return {}
    out = {}
    for key, reps in rb.probas.items():
        r0 = min(reps)
        m = classification_metrics(rb.labels, reps[r0], n_boot=n_boot, groups=rb.groups)["roc_auc"]
        out[key] = f"{num(m['ci_low'])}–{num(m['ci_high'])} ({m.get('n_boot_used', 0)}/{n_boot})"
    return out


def _size_tables(rows: list[dict], cmaps: dict[str, dict[str, list[CurvePoint]]], strategies: list[str],
                 cell_cis: dict[tuple[str, int], str] | None = None) -> list[dict[str, Any]]:
    """One table per size: per strategy, median [IQR] of each metric, CI of the median, repeats."""
    sizes = sorted({int(r["n_per_class"]) for r in rows})
    tables = []
    for n in sizes:
        lines = []
        for s in strategies:
            cells = [r for r in rows if r["strategy"] == s and int(r["n_per_class"]) == n]
            status = [r.get("status") for r in cells]
            line: dict[str, Any] = {"strategy": s, "ok": status.count("ok"), "failed": status.count("failed"),
                                    "skipped": status.count("skipped"), "metrics": {}}
            for m in METRICS:
                p = point_at(cmaps[m].get(s, []), n)
                line["metrics"][m] = (
                    {"median": num(p.median), "iqr": f"{num(p.q1)}–{num(p.q3)}",
                     "ci": f"{num(p.ci_low)}–{num(p.ci_high)}"} if p else None)
            ok_cells = sorted((r for r in cells if r.get("status") == "ok"), key=lambda r: int(r["repeat"]))
            r0 = ok_cells[0] if ok_cells else None
            line["images"] = _train_val(ok_cells)
            line["test_ci"] = (cell_cis or {}).get((s, n)) or (
                f"{num(r0.get('roc_auc_ci_low'))}–{num(r0.get('roc_auc_ci_high'))}" if r0 else "—")
            lines.append(line)
        tables.append({"n_per_class": n, "lines": lines})
    return tables


def build(data: ReportData) -> dict[str, Any]:
    return {"size_tables": _size_tables(data.rows, data.cmaps, data.strategies, _cell_cis(data.bootstrap)),
            "metrics": METRICS, "metric_labels": METRIC_LABELS}


SECTION = Section(anchor="sizes", title="Results per labelled-set size", nav="Per size", build=build,
                  template=fragment(__file__))
