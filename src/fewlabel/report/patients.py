"""Patient-level results: when a test patient (group) has several images, each repeat's image
probabilities are pooled per patient (mean, ``evaluate.metrics.pool_by_group``) and scored; the
interval of the mean over repeats comes from the shared two-way bootstrap (test patients × repeats,
``evaluate.cluster_bootstrap``), as the report's image-level curves do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fewlabel.evaluate.cluster_bootstrap import draw_plan, per_repeat_metric
from fewlabel.evaluate.metrics import PATIENT_METRICS, pool_by_group
from fewlabel.experiments.run_view import RunView


def mean_over_repeats(y: np.ndarray, groups: np.ndarray, probas: Mapping[int, np.ndarray], metric: str,
                      n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict[str, float]:
    """Mean of ``metric`` over the repeats' probabilities (rows = images of ``groups``), with the
    percentile interval of the two-way bootstrap over ``groups`` × repeats."""
    plan = draw_plan(groups, y, len(probas), n_boot, seed)
    m = per_repeat_metric(plan, y, dict(probas), metric)
    boot = m.resampled_mean(plan, len(m.repeats))
    boot = boot[np.isfinite(boot)]
    alpha = (1 - ci) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    return {"value": float(np.nanmean(m.point)), "ci_low": float(low), "ci_high": float(high)}


def patient_table(view: RunView, rows: list[Mapping[str, Any]], strategies: list[str],
                  n_boot: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Per strategy × size: patient-level ``PATIENT_METRICS`` (mean over repeats, interval), or None
    when no test patient has more than one image (the image-level tables then say it all)."""
    truth = view.test_truth()
    if truth is None:
        return None
    y, groups, _ = truth
    if len(np.unique(groups)) == len(groups):
        return None
    y_pat, _, patients = pool_by_group(y, np.eye(int(y.max()) + 1)[y], groups)
    probas = view.probas(rows, len(y))
    order = {s: k for k, s in enumerate(strategies)}
    table = []
    for (strategy, n), reps in sorted(probas.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        pooled = {r: pool_by_group(y, p, groups)[1] for r, p in reps.items()}
        entry: dict[str, Any] = {"strategy": strategy, "n_per_class": n, "repeats": len(reps)}
        for metric in PATIENT_METRICS:
            entry[metric] = mean_over_repeats(y_pat, np.asarray(patients), pooled, metric, n_boot, seed)
        table.append(entry)
    return {"rows": table, "n_patients": len(patients), "n_images": len(y),
            "rule": "mean of each patient's image probabilities", "metrics": list(PATIENT_METRICS)}
