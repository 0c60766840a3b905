"""The labels-needed interval against simulated curves whose true answer is known: it covers the truth
at close to its nominal rate, and the cap on extrapolation holds."""

from __future__ import annotations

import math

import numpy as np

from fewlabel.report.curve_simulation import TrueCurve, calibration_cases, simulate_curve
from fewlabel.report.label_need import INTERVAL_LEVEL, MAX_EXTRAPOLATION, estimate_need


def _covered(est, truth: float) -> bool:
    return est.low is not None and est.low <= truth <= (est.high if est.high is not None else math.inf)


def test_interval_covers_the_true_need_at_its_nominal_rate_over_varied_curves() -> None:
    rng = np.random.default_rng(0)
    hits, by_ratio = [], {}
    for case in calibration_cases(144):
        curve = simulate_curve(rng, case.truth, case.sizes, n_boot=200, repeat_sd=case.repeat_sd,
                               test_sd=case.test_sd)
        est = estimate_need(curve, case.target, chance=0.5)
        hit = _covered(est, case.true_need)
        hits.append(hit)
        by_ratio.setdefault(round(case.true_need / case.sizes[-1], 1), []).append(hit)
    assert INTERVAL_LEVEL == 0.90
    # 144 cases: a 90% interval covers 0.80-0.97 of them unless it is miscalibrated
    assert 0.80 <= np.mean(hits) <= 0.97, np.mean(hits)
    # and not by averaging over- and under-coverage: each extrapolation distance on its own
    assert all(np.mean(v) >= 0.72 for v in by_ratio.values()), {k: np.mean(v) for k, v in by_ratio.items()}


def test_the_simulation_is_deterministic() -> None:
    case = calibration_cases(1)[0]
    a = simulate_curve(np.random.default_rng(7), case.truth, case.sizes, n_boot=50)
    b = simulate_curve(np.random.default_rng(7), case.truth, case.sizes, n_boot=50)
    assert np.array_equal(a.point, b.point) and np.array_equal(a.boot, b.boot)
    # the resamples scatter around the point as the noise says: neither collapsed nor wild
    sd = a.boot.std(axis=0)
    assert np.all((sd > 0.002) & (sd < 0.05)), sd


def test_no_answer_and_no_interval_end_passes_the_cap() -> None:
    rng = np.random.default_rng(1)
    sizes = [1, 2, 3, 5, 7, 10]
    limit = MAX_EXTRAPOLATION * sizes[-1]
    truth = TrueCurve(0.95, 0.25, 0.5)
    refused = 0
    for far in (8.0, 20.0, 100.0):  # true need 8x, 20x and 100x the largest size run
        target = truth.at(far * sizes[-1])
        for _ in range(10):
            est = estimate_need(simulate_curve(rng, truth, sizes, n_boot=200, repeat_sd=0.015,
                                               test_sd=0.005), target, chance=0.5)
            assert est.n is None or est.n <= limit, est.text
            assert est.high is None or est.high <= limit, est.text
            assert est.low is None or est.low <= limit, est.text
            refused += est.how in ("beyond cap", "not reached")
    assert refused >= 24, refused  # most of the 30 far targets are refused outright


def test_a_curve_with_its_test_set_fixed_resamples_the_repeats_only() -> None:
    from fewlabel.evaluate.cluster_bootstrap import RepeatMetrics, draw_plan
    from fewlabel.report.run_data import RunBootstrap

    plan = draw_plan(np.arange(20), np.arange(20) % 2, n_repeats=3, n_boot=100, seed=0)
    rng = np.random.default_rng(0)
    same = RepeatMetrics([0, 1, 2], np.full(3, 0.8), 0.8 + rng.normal(0, 0.02, (100, 3)))
    varied = RepeatMetrics([0, 1, 2], np.array([0.85, 0.9, 0.95]), 0.9 + rng.normal(0, 0.02, (100, 3)))
    rb = RunBootstrap(plan=plan, cells={("s", 1): same, ("s", 2): varied}, source="plan.json", slots=3,
                      labels=np.zeros(20, dtype=int), groups=np.arange(20).astype(str), probas={})
    fixed, resampled = rb.curve("s", test_set_fixed=True), rb.curve("s")
    assert np.array_equal(fixed.point, resampled.point)
    # identical repeats leave nothing to resample once the test set is fixed; the test set's noise is gone
    assert np.allclose(fixed.boot[:, 0], 0.8, rtol=0, atol=1e-12) and resampled.boot[:, 0].std() > 0.005
    # what remains is the spread between repeats, each scored on the whole test set: every resample
    # is a mean of three of the repeats' own values
    v = np.array([0.85, 0.9, 0.95])
    means = {round(float(m), 9) for m in (v[:, None, None] + v[None, :, None] + v[None, None, :]).ravel() / 3}
    assert {round(float(m), 9) for m in fixed.boot[:, 1]} <= means and fixed.boot[:, 1].std() > 0.01
