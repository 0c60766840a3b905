"""The shared bootstrap over test groups × repeats behind every CI, paired difference and
labels-needed interval of the report, drawn from what ``RunView`` reads of a run: the test set's true
labels and groups (``RunView.test_truth``) and each ok cell's test probabilities (``RunView.probas``).
Runs without them fall back to repeat-only statistics, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewlabel.evaluate.cluster_bootstrap import BootstrapPlan, RepeatMetrics, draw_plan, per_repeat_metric
from fewlabel.experiments.run_view import RunView


@dataclass
class CurveBootstrap:
    """One strategy's curve: per size the mean over repeats (point) and its resampled values (B, S)."""

    sizes: list[int]
    point: np.ndarray
    boot: np.ndarray
    cells: list[RepeatMetrics]

    def subset(self, keep: np.ndarray) -> CurveBootstrap:
        idx = np.flatnonzero(keep)
        return CurveBootstrap([self.sizes[i] for i in idx], self.point[idx], self.boot[:, idx],
                              [self.cells[i] for i in idx])

    def ci(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        alpha = (1 - level) / 2
        with np.errstate(all="ignore"):
            return (np.nanquantile(self.boot, alpha, axis=0), np.nanquantile(self.boot, 1 - alpha, axis=0))


@dataclass
class RunBootstrap:
    """Everything drawn from one plan: per (strategy, size) its repeat metrics, and the plan."""

    plan: BootstrapPlan
    cells: dict[tuple[str, int], RepeatMetrics]
    source: str
    slots: int
    labels: np.ndarray
    groups: np.ndarray
    probas: dict[tuple[str, int], dict[int, np.ndarray]]

    def curve(self, strategy: str, test_set_fixed: bool = False) -> CurveBootstrap | None:
        """The strategy's bootstrapped curve. ``test_set_fixed``: resample the repeats only, each
        scored on the whole test set — the curve's uncertainty about *this* test set's values, which
        is what a check against the same test set's larger sizes measures."""
        sizes = sorted(n for s, n in self.cells if s == strategy)
        if not sizes:
            return None
        cells = [self.cells[(strategy, n)] for n in sizes]
        if test_set_fixed:
            cells = [RepeatMetrics(c.repeats, c.point, np.broadcast_to(c.point, c.boot.shape)) for c in cells]
        point = np.array([np.nanmean(c.point) if np.isfinite(c.point).any() else math.nan for c in cells])
        # each cell resamples its own repeat count: a cell with 2 finished repeats drawn 6 times would
        # average away the spread between its repeats and get too narrow an interval
        boot = np.stack([c.resampled_mean(self.plan, len(c.repeats)) for c in cells], axis=1)
        return CurveBootstrap(sizes, point, boot, cells)


def run_bootstrap(view: RunView, rows: list[Mapping[str, Any]], metric: str = "roc_auc",
                  n_boot: int = 2000, seed: int = 0) -> RunBootstrap | None:
    """The shared bootstrap of a run, or None when its test truth or probabilities cannot be read."""
    truth = view.test_truth()
    if truth is None:
        return None
    labels, groups, source = truth
    probas = view.probas(rows, len(labels))
    if not probas:
        return None
    slots = max(len(v) for v in probas.values())
    plan = draw_plan(groups, labels, n_repeats=slots, n_boot=n_boot, seed=seed)
    cells = {key: per_repeat_metric(plan, labels, reps, metric) for key, reps in probas.items()}
    return RunBootstrap(plan=plan, cells=cells, source=source, slots=slots, labels=labels, groups=groups,
                        probas=probas)


def curve_bootstrap(view: RunView, rows: list[Mapping[str, Any]], metric: str = "roc_auc",
                    n_boot: int = 2000, seed: int = 0, test_set_fixed: bool = False
                    ) -> dict[str, CurveBootstrap]:
    """Per strategy its bootstrapped curve (empty when the run lacks test truth or probabilities)."""
    rb = run_bootstrap(view, rows, metric, n_boot=n_boot, seed=seed)
    if rb is None:
        return {}
    strategies = dict.fromkeys(s for s, _ in rb.cells)
    return {s: c for s in strategies if (c := rb.curve(s, test_set_fixed)) is not None}
