"""What the report needs from a run folder beyond the store's rows: the test set's true labels and
groups, and each cell's test probabilities; and, from them, the shared bootstrap over test groups ×
repeats behind every CI, paired difference and labels-needed interval of the report.

``test_truth`` is the one place that reads the test set's truth: ``plan.json`` (``test.labels``,
``test.groups``, in the row order of every ``proba_test.npy``), else ``split.json``'s ``test_labels``
/ ``test_groups`` (the same order). Runs with neither fall back to repeat-only statistics, and the
report says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.evaluate.cluster_bootstrap import BootstrapPlan, RepeatMetrics, draw_plan, per_repeat_metric


def test_truth(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(labels, groups, source file name) of the run's test set in proba row order, or None."""
    run_dir = Path(run_dir)
    for name, pick in (("plan.json", lambda d: (d.get("test") or {}).get("labels"),),
                       ("split.json", lambda d: d.get("test_labels"))):
        try:
            data = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        labels = pick(data)
        if not labels:
            continue
        groups = ((data.get("test") or {}).get("groups") if name == "plan.json" else data.get("test_groups"))
        if not groups or len(groups) != len(labels):
            groups = [str(i) for i in range(len(labels))]  # no groups recorded: each image its own
        return np.asarray(labels, dtype=np.int64), np.asarray([str(g) for g in groups]), name
    return None


def cell_probas(run_dir: str | Path, rows: Iterable[Mapping[str, Any]], n_test: int
                ) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """(strategy, size) → {repeat: proba (n_test, K)} for every ok cell whose file is readable."""
    run_dir = Path(run_dir)
    out: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for row in rows:
        if row.get("status", "ok") != "ok":
            continue
        strategy, size, repeat = str(row["strategy"]), int(row["n_per_class"]), int(row["repeat"])
        rel = row.get("proba_path") or f"cells/{strategy}/n{size}_r{repeat}/proba_test.npy"
        try:
            proba = np.load(run_dir / str(rel), allow_pickle=False)
        except (OSError, ValueError):
            continue
        if proba.ndim == 2 and proba.shape[0] == n_test and np.all(np.isfinite(proba)):
            out.setdefault((strategy, size), {})[repeat] = proba
    return out


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
        boot = np.stack([c.resampled_mean(self.plan, self.slots) for c in cells], axis=1)
        return CurveBootstrap(sizes, point, boot, cells)


def run_bootstrap(run_dir: str | Path, rows: list[Mapping[str, Any]], metric: str = "roc_auc",
                  n_boot: int = 2000, seed: int = 0) -> RunBootstrap | None:
    """The shared bootstrap of a run, or None when its test truth or probabilities cannot be read."""
    truth = test_truth(run_dir)
    if truth is None:
        return None
    labels, groups, source = truth
    probas = cell_probas(run_dir, rows, len(labels))
    if not probas:
        return None
    slots = max(len(v) for v in probas.values())
    plan = draw_plan(groups, labels, n_repeats=slots, n_boot=n_boot, seed=seed)
    cells = {key: per_repeat_metric(plan, labels, reps, metric) for key, reps in probas.items()}
    return RunBootstrap(plan=plan, cells=cells, source=source, slots=slots, labels=labels, groups=groups,
                        probas=probas)


def curve_bootstrap(run_dir: str | Path, rows: list[Mapping[str, Any]], metric: str = "roc_auc",
                    n_boot: int = 2000, seed: int = 0, test_set_fixed: bool = False
                    ) -> dict[str, CurveBootstrap]:
    """Per strategy its bootstrapped curve (empty when the run lacks test truth or probabilities)."""
    rb = run_bootstrap(run_dir, rows, metric, n_boot=n_boot, seed=seed)
    if rb is None:
        return {}
    strategies = dict.fromkeys(s for s, _ in rb.cells)
    return {s: c for s in strategies if (c := rb.curve(s, test_set_fixed)) is not None}
