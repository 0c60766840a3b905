"""``analyse(view, ...) -> ReportData``: what more than one report section reads, computed once.

The learning curves of every headline metric, and, for the chosen metric, the one bootstrap over test
groups × repeats (``report.run_data``) that gives the curve CIs, the labels-needed estimates and the
paired comparisons. Runs without per-image test results fall back to statistics over repeats only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fewlabel.evaluate.metrics import HEADLINE_METRICS
from fewlabel.experiments.run_view import RunView
from fewlabel.report.curves import CurvePoint, PowerLaw, curves, fit_power_law, size_to_target
from fewlabel.report.label_need import estimate_need
from fewlabel.report.paired import cluster_paired_table, holm_by_size, paired_table
from fewlabel.report.provenance import is_synthetic
from fewlabel.report.run_data import RunBootstrap, run_bootstrap

METRICS = HEADLINE_METRICS


@dataclass(frozen=True)
class ReportData:
    """One run, read and analysed for the report (sections read it; none changes it)."""

    view: RunView
    info: Mapping[str, Any]  # run.json
    rows: list[dict]
    config: Mapping[str, Any]
    dataset: Mapping[str, Any]
    classes: list[str]
    strategies: list[str]  # the configured order, then any others found in the rows
    metric: str
    target: float
    baseline: str
    cmaps: dict[str, dict[str, list[CurvePoint]]]  # metric → strategy → points (CIs of ``metric`` set)
    bootstrap: RunBootstrap | None  # None: no per-image test results to resample
    fits: dict[str, PowerLaw | None]
    targets: dict[str, Any]  # strategy → labels-needed estimate
    paired: list[dict[str, Any]]  # each strategy against ``baseline``, per size, Holm-adjusted
    synthetic: bool
    n_test: int | None
    explanations: Mapping[str, Any] | None  # the explanations index
    explain_error: str | None
    n_boot: int = 2000  # resamples of every bootstrap a section draws
    seed: int = 0


def configured_arms(config: Mapping[str, Any]) -> list[str]:
    """The run's arms in its order: each strategy, then the strategy on each selection rule's picks."""
    from fewlabel.experiments.arms import arm_name

    rules = [None, *(config.get("selection") or [])]
    return [arm_name(str(s), rule) for s in config.get("strategies") or [] for rule in rules]


def stratified_arms(arms: list[str]) -> list[str]:
    """The strategies on the class-stratified draw: the family compared with the baseline (selection
    arms are compared among themselves, in their own section)."""
    from fewlabel.experiments.arms import arm_parts

    return [a for a in arms if arm_parts(a)[1] is None]


def point_at(points: list[CurvePoint], n: int) -> CurvePoint | None:
    """The point of a curve at ``n`` labelled images per class, if that size finished."""
    return next((p for p in points if p.n_per_class == n), None)


def fit_of(estimate: Any) -> PowerLaw | None:
    """The fitted curve of a labels-needed estimate, if it has one."""
    fit = getattr(estimate, "fit", None)
    return None if fit is None else PowerLaw(float(fit.a[0]), float(fit.b[0]), float(fit.c[0]),
                                             shift=float(fit.d[0]))


def _chance(metric: str, n_classes: int) -> float:
    """The metric's value for guessing: the floor of a fitted learning curve."""
    if metric == "roc_auc":
        return 0.5
    return 0.0 if metric == "macro_f1" else 1.0 / max(2, n_classes)


def _is_synthetic(run: Mapping[str, Any]) -> bool:
    if run.get("synthetic"):
        return True
    root = (run.get("dataset") or {}).get("root") or (run.get("config") or {}).get("data") or ""
    return bool(root) and is_synthetic(root)


def _bootstrap_answers(rb: RunBootstrap, cmap: dict[str, list[CurvePoint]], strategies: list[str],
                       target: float, baseline: str, chance: float
                       ) -> tuple[dict[str, PowerLaw | None], dict[str, Any], list[dict[str, Any]]]:
    """Curve CIs (set on the points), labels-needed estimates and paired comparisons, all from the
    one bootstrap over test groups × repeats."""
    fits: dict[str, PowerLaw | None] = {}
    targets: dict[str, Any] = {}
    for s in strategies:
        curve = rb.curve(s)
        if curve is None:
            continue
        lo, hi = curve.ci(0.95)
        for i, n in enumerate(curve.sizes):
            p = point_at(cmap.get(s, []), n)
            if p is not None:
                p.ci_low, p.ci_high, p.mean = float(lo[i]), float(hi[i]), float(curve.point[i])
        est = estimate_need(curve, target, chance=chance)
        targets[s] = est
        fits[s] = fit_of(est) if est.how == "extrapolated" else None
    return fits, targets, cluster_paired_table(rb, baseline, only=stratified_arms(strategies))


def analyse(view: RunView, metric: str = "roc_auc", target: float = 0.90, baseline: str = "scratch",
            n_boot: int = 2000, seed: int = 0, explanations: Mapping[str, Any] | None = None,
            explain_error: str | None = None) -> ReportData:
    """Read the run through ``view`` and compute the shared statistics (same seed, same numbers)."""
    run, rows = view.info, view.rows()
    config = run.get("config") or {}
    dataset = run.get("dataset") or {}
    classes = [str(c) for c in dataset.get("classes") or config.get("class_names") or []]
    order = configured_arms(config)
    strategies = order + sorted({str(r["strategy"]) for r in rows} - set(order))
    cmaps = {m: curves(rows, m, n_boot=n_boot, seed=seed) for m in METRICS}
    for cm in cmaps.values():  # a strategy with no successful cell still gets a (blank) line
        for s in strategies:
            cm.setdefault(s, [])
    cmaps = {m: {s: cm[s] for s in strategies} for m, cm in cmaps.items()}
    rb = run_bootstrap(view, rows, metric, n_boot=n_boot, seed=seed) if rows else None
    if rb is not None:
        fits, targets, paired = _bootstrap_answers(rb, cmaps[metric], strategies, target, baseline,
                                                   _chance(metric, len(classes)))
    else:  # older runs without per-image test results: statistics over repeats only
        fits = {s: fit_power_law(pts) for s, pts in cmaps[metric].items()}
        targets = {s: size_to_target(pts, target, fits[s]) for s, pts in cmaps[metric].items() if pts}
        paired = holm_by_size(paired_table(rows, metric, baseline=baseline, n_boot=n_boot, seed=seed,
                                           only=stratified_arms(strategies)))
    n_test = dataset.get("n_test") or next((r.get("n_test") for r in rows if r.get("n_test")), None)
    return ReportData(
        view=view, info=run, rows=rows, config=config, dataset=dataset, classes=classes,
        strategies=strategies, metric=metric, target=target, baseline=baseline, cmaps=cmaps, bootstrap=rb,
        fits=fits, targets=targets, paired=paired, synthetic=_is_synthetic(run), n_test=n_test,
        explanations=explanations if explanations is not None else view.explanations(),
        explain_error=explain_error, n_boot=n_boot, seed=seed)
