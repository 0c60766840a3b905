"""Each strategy against a baseline (scratch), size by size, paired by repeat.

Within a repeat every strategy sees the same labelled images and the same fine-tuning seed (see
``fewlabel.experiments.grid``), so the per-repeat differences are the honest unit of comparison.
Numbers come from ``fewlabel.evaluate.compare.paired_difference`` (bootstrap CI of the mean
difference, two-sided Wilcoxon signed-rank p).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from fewlabel.evaluate.compare import paired_difference

# With n pairs the smallest two-sided exact Wilcoxon p is 2 / 2**n: below 6 pairs it cannot reach 0.05.
MIN_PAIRS_FOR_WILCOXON = 6


def _values(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[str, int], dict[int, float]]:
    out: dict[tuple[str, int], dict[int, float]] = {}
    for row in rows:
        value = row.get(metric)
        if row.get("status", "ok") != "ok" or value is None or not math.isfinite(float(value)):
            continue
        out.setdefault((str(row["strategy"]), int(row["n_per_class"])), {})[int(row["repeat"])] = float(value)
    return out


def paired_table(rows: Iterable[Mapping[str, Any]], metric: str = "roc_auc", baseline: str = "scratch",
                 n_boot: int = 2000, seed: int = 0,
                 only: Collection[str] | None = None) -> list[dict[str, Any]]:
    """One entry per (strategy != baseline, size) where both ran: ``strategy, n_per_class, n,
    mean_diff, median_diff, ci_low, ci_high, p_value, few_pairs`` (True when Wilcoxon cannot reach
    p < 0.05 with so few pairs; the numbers are reported anyway). ``only``: the strategies compared
    (the family Holm adjusts over); default every one."""
    values = _values(rows, metric)
    strategies = sorted({s for s, _ in values if s != baseline and (only is None or s in only)})
    table = []
    for strategy in strategies:
        for n in sorted({size for s, size in values if s == strategy}):
            mine, base = values.get((strategy, n), {}), values.get((baseline, n), {})
            repeats = sorted(set(mine) & set(base))
            if not repeats:
                continue
            res = paired_difference([mine[r] for r in repeats], [base[r] for r in repeats],
                                    n_boot=n_boot, seed=seed)
            table.append({"strategy": strategy, "n_per_class": n, **res,
                          "few_pairs": res["n"] < MIN_PAIRS_FOR_WILCOXON})
    return table


def holm_by_size(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``p_holm`` (Holm over the strategies compared at each size) and ``survives`` (p_holm < 0.05
    on enough repeats: a ``few_pairs`` row counts in the correction but never survives it)."""
    from fewlabel.evaluate.cluster_bootstrap import holm

    for n in {r["n_per_class"] for r in table}:
        at = [r for r in table if r["n_per_class"] == n]
        for r, p in zip(at, holm([r["p_value"] for r in at]), strict=True):
            r["p_holm"] = p
            r["survives"] = bool(math.isfinite(p) and p < 0.05 and not r.get("few_pairs"))
    return table


def cluster_paired_table(rb: Any, baseline: str = "scratch", ci: float = 0.95,
                         only: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Like ``paired_table`` but from the run's shared bootstrap (``report.run_data.RunBootstrap``):
    difference of means over repeats with a CI and p-value from test groups × repeats resampled
    paired; plus Holm-adjusted p-values over the strategies at each size."""
    from fewlabel.evaluate.cluster_bootstrap import paired_summary

    table = []
    strategies = sorted({s for s, _ in rb.cells if s != baseline and (only is None or s in only)})
    for strategy in strategies:
        for n in sorted(size for s, size in rb.cells if s == strategy):
            base = rb.cells.get((baseline, n))
            if base is None:
                continue
            res = paired_summary(rb.plan, rb.cells[(strategy, n)], base, ci=ci)
            if res["n"] == 0:
                continue
            table.append({"strategy": strategy, "n_per_class": n, **res})
    return holm_by_size(table)
