"""The paired cluster bootstrap (test groups × repeats) on simulated scores with a known difference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fewlabel.evaluate.cluster_bootstrap import (
    bootstrap_p_value,
    draw_plan,
    holm,
    paired_summary,
    per_repeat_metric,
)

# Binormal scores: label shift d (+ a per-repeat training shift), a shared patient effect, image noise
# partly shared by the two strategies (same test images). Population AUC of a model with shift d:
# Phi(d / sqrt(2 (su^2 + se^2))); averaged over the repeat shift N(0, tau^2) it is
# Phi(d / sqrt(2 (su^2 + se^2) + tau^2)).
SU, SE, TAU = 0.5, 0.7, 0.25
D_A, D_B = 1.0, 0.75


def _true_auc(d: float) -> float:
    return float(stats.norm.cdf(d / np.sqrt(2 * (SU**2 + SE**2) + TAU**2)))


def _simulate(rng: np.random.Generator, groups: int = 40, per_group: int = 3, repeats: int = 6):
    label = np.repeat(np.arange(groups) % 2, per_group)
    group = np.repeat(np.arange(groups), per_group)
    patient = np.repeat(rng.normal(0, SU, groups), per_group)
    shared = rng.normal(0, SE * np.sqrt(0.7), len(label))
    probas = {"a": {}, "b": {}}
    for r in range(repeats):
        for name, d in (("a", D_A), ("b", D_B)):
            own = rng.normal(0, SE * np.sqrt(0.3), len(label))
            score = (d + rng.normal(0, TAU)) * label + patient + shared + own
            p1 = 1 / (1 + np.exp(-score))
            probas[name][r] = np.stack([1 - p1, p1], axis=1)
    return label, group, probas


def test_paired_cluster_bootstrap_covers_a_known_difference_at_its_nominal_rate() -> None:
    truth = _true_auc(D_A) - _true_auc(D_B)
    rng = np.random.default_rng(2024)
    sims, covered, significant = 150, 0, 0
    for i in range(sims):
        y, g, probas = _simulate(rng)
        plan = draw_plan(g, y, n_repeats=6, n_boot=400, seed=i)
        a = per_repeat_metric(plan, y, probas["a"], "roc_auc")
        b = per_repeat_metric(plan, y, probas["b"], "roc_auc")
        res = paired_summary(plan, a, b, ci=0.90)
        covered += res["ci_low"] <= truth <= res["ci_high"]
        significant += res["p_value"] < 0.05
        assert res["n"] == 6 and res["n_boot_used"] == 400 and res["n_groups"] == 40
    # nominal 90%; 150 simulations give a binomial SD of about 2.5 points
    assert 0.83 <= covered / sims <= 0.96, covered / sims
    # the difference (about 0.05 AUC) is real: with 6 repeats and 40 patients the test finds it often
    # (about 40% power here), far more often than the 5% of a null difference
    assert significant / sims > 0.25, significant / sims


def test_bootstrap_over_repeats_only_under_covers_where_the_cluster_bootstrap_does_not() -> None:
    """The old method (bootstrap of the per-repeat differences) ignores test-set sampling."""
    from fewlabel.evaluate.compare import paired_difference

    truth = _true_auc(D_A) - _true_auc(D_B)
    rng = np.random.default_rng(7)
    old = 0
    for i in range(80):
        y, g, probas = _simulate(rng)
        plan = draw_plan(g, y, n_repeats=6, n_boot=300, seed=i)
        a = per_repeat_metric(plan, y, probas["a"], "roc_auc")
        b = per_repeat_metric(plan, y, probas["b"], "roc_auc")
        r = paired_difference(a.point, b.point, n_boot=300, seed=i, ci=0.90)
        old += r["ci_low"] <= truth <= r["ci_high"]
    assert old / 80 < 0.80, old / 80


def test_plan_is_stratified_shared_and_deterministic() -> None:
    y = np.array([0] * 6 + [1] * 4)
    g = np.array(["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4", "p5", "p5"])
    p1, p2 = draw_plan(g, y, 3, n_boot=200, seed=1), draw_plan(g, y, 3, n_boot=200, seed=1)
    assert np.array_equal(p1.weights, p2.weights) and np.array_equal(p1.repeat_u, p2.repeat_u)
    # stratified by the group's class: every resample holds 3 class-0 and 2 class-1 groups (x 2 images)
    assert (p1.weights[:, y == 0].sum(axis=1) == 6).all() and (p1.weights[:, y == 1].sum(axis=1) == 4).all()
    # a group's images share one count
    assert (p1.weights[:, 0] == p1.weights[:, 1]).all()
    assert p1.n_groups == 5 and p1.n_strata == 2


def test_holm_and_p_value() -> None:
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, float("nan")])[1])
    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(0.02)
    assert bootstrap_p_value(np.linspace(-1, 1, 101)) == 1.0


def test_two_repeats_give_an_interval_but_no_verdict() -> None:
    from fewlabel.report.paired import holm_by_size

    rng = np.random.default_rng(3)
    label, group, probas = _simulate(rng, repeats=2)
    plan = draw_plan(group, label, n_repeats=2, n_boot=500, seed=0)
    a = per_repeat_metric(plan, label, probas["a"], "roc_auc")
    b = per_repeat_metric(plan, label, probas["b"], "roc_auc")
    res = paired_summary(plan, a, b)
    assert res["n"] == 2 and res["few_pairs"]
    assert res["ci_low"] > 0  # the interval alone would claim a difference ...
    row = holm_by_size([{"strategy": "a", "n_per_class": 2, **res}])[0]
    assert row["p_holm"] < 0.05 and not row["survives"]  # ... and no verdict is given on 2 repeats
    label, group, probas = _simulate(np.random.default_rng(3), repeats=5)
    plan = draw_plan(group, label, n_repeats=5, n_boot=500, seed=0)
    five = paired_summary(plan, *(per_repeat_metric(plan, label, probas[k], "roc_auc") for k in "ab"))
    assert five["n"] == 5 and not five["few_pairs"]


def test_a_cell_s_curve_interval_resamples_its_own_repeat_count() -> None:
    from fewlabel.evaluate.cluster_bootstrap import RepeatMetrics
    from fewlabel.report.run_data import RunBootstrap

    labels = np.array([0, 1] * 10)
    plan = draw_plan(np.arange(20), labels, n_repeats=6, n_boot=4000, seed=0)

    def cell(values: list[float]) -> RepeatMetrics:  # no test-set spread: only the repeats vary
        point = np.array(values)
        return RepeatMetrics(list(range(len(values))), point, np.tile(point, (plan.n_boot, 1)))

    rb = RunBootstrap(plan=plan, cells={("s", 2): cell([0.70, 0.80]), ("s", 5): cell([0.8] * 6)},
                      source="test", slots=6, labels=labels, groups=np.arange(20), probas={})
    low, high = rb.curve("s").ci()
    # two repeats drawn twice: means 0.70, 0.75 or 0.80; six draws of two would give about [0.717, 0.783]
    assert low[0] == pytest.approx(0.70) and high[0] == pytest.approx(0.80)
    assert low[1] == pytest.approx(0.8) and high[1] == pytest.approx(0.8)
