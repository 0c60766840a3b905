"""Calibration: do the probabilities mean what they say? Per strategy × size the expected
calibration error (top-label and classwise; median over repeats, 95% CI of the mean from the run's
shared bootstrap over test groups × repeats), and a reliability diagram per strategy at its smallest
and largest finished size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fewlabel.evaluate.calibration import N_BINS, ece_summary, per_repeat_ece, reliability_bins
from fewlabel.figures import plain_text, to_png
from fewlabel.report.analysis import ReportData
from fewlabel.report.formatting import b64, num
from fewlabel.report.run_data import RunBootstrap
from fewlabel.report.sections.section import Section, fragment


def _summary_text(s: Mapping[str, Any]) -> dict[str, str]:
    """The table's text, under ``*_s`` keys so the numbers themselves stay beside it."""
    return {"median_iqr_s": f"{num(s['median'])} [{num(s['q1'])}–{num(s['q3'])}]", "mean_s": num(s["mean"]),
            "ci_s": f"{num(s['ci_low'])}–{num(s['ci_high'])}"}


def calibration_table(rb: RunBootstrap, strategies: list[str], n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Per (strategy, size) with test probabilities: top-label and classwise ECE over its repeats, each
    CI from the run's plan with this cell's own repeat count."""
    order = {s: k for k, s in enumerate(strategies)}
    table = []
    for (strategy, n), reps in sorted(rb.probas.items(), key=lambda kv: (order.get(kv[0][0], len(order)),
                                                                          kv[0][0], kv[0][1])):
        entry: dict[str, Any] = {"strategy": strategy, "n_per_class": n, "repeats": len(reps)}
        for kind in ("top", "classwise"):
            s = ece_summary(rb.plan, per_repeat_ece(rb.plan, rb.labels, reps, n_bins, kind))
            entry[kind] = {**s, **_summary_text(s)}
        table.append(entry)
    return table


def _diagram_cells(rb: RunBootstrap, strategies: list[str]) -> dict[str, list[int]]:
    """Per strategy its smallest and largest finished size (one size when it finished only one)."""
    out = {}
    for s in strategies:
        sizes = sorted(n for st, n in rb.probas if st == s)
        if sizes:
            out[s] = sorted({sizes[0], sizes[-1]})
    return out


def plot_reliability(rb: RunBootstrap, cells: Mapping[str, list[int]], n_bins: int = N_BINS, dpi: int = 110
                     ) -> bytes:
    """PNG: one panel per strategy; per size, accuracy against mean confidence in each non-empty bin
    (repeats pooled; marker area ∝ the bin's share of images), and the diagonal of calibration."""
    ncols = min(3, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 3.3 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    lo = 1.0 / max(2, int(rb.labels.max()) + 1)  # the top-class probability is never below 1/K
    for ax, (strategy, sizes) in zip(axes, cells.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="calibrated")
        for k, n in enumerate(sizes):
            reps = rb.probas[(strategy, n)]
            bins = reliability_bins(rb.labels, [reps[r] for r in sorted(reps)], n_bins)
            share = bins.count / max(1, bins.count.sum())
            color = f"C{k % 10}"
            ax.plot(bins.confidence, bins.accuracy, color=color, linewidth=1.2,
                    label=f"{n} per class ({len(reps)} rep.)")
            ax.scatter(bins.confidence, bins.accuracy, s=10 + 140 * share, color=color, zorder=3)
        ax.set_xlim(lo - 0.03, 1.01)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(plain_text(strategy, limit=32), fontsize=10)
        ax.set_xlabel("mean confidence (top-class probability)", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
    for ax in axes[len(cells):]:
        ax.set_visible(False)
    fig.tight_layout()
    return to_png(fig, dpi=dpi)


def build(data: ReportData) -> dict[str, Any] | None:
    if not data.rows:
        return None
    rb = data.bootstrap
    if rb is None:
        return {"calibration_rows": [], "reliability_png": None, "n_bins": N_BINS}
    cells = _diagram_cells(rb, data.strategies + sorted({s for s, _ in rb.probas} - set(data.strategies)))
    return {"calibration_rows": calibration_table(rb, data.strategies),
            "reliability_png": b64(plot_reliability(rb, cells)) if cells else None, "n_bins": N_BINS}


SECTION = Section(anchor="calibration", title="Calibration", nav="Calibration", build=build,
                  template=fragment(__file__))
