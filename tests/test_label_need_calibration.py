"""The labels-needed interval against simulated curves whose true answer is known: it covers the truth
at close to its nominal rate, and the cap on extrapolation holds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewlabel.report.curve_simulation import TrueCurve, calibration_cases, simulate_curve
from fewlabel.report.label_need import INTERVAL_LEVEL, MAX_EXTRAPOLATION, estimate_need


def _covered(est, truth: float) -> bool:
    return est.low is not None and est.low <= truth <= (est.high if est.high is not None else math.inf)


@pytest.mark.parametrize("shift", [0.0, 2.0], ids=["power-law", "lagging-small-sizes"])
def test_interval_covers_the_true_need_at_its_nominal_rate_over_varied_curves(shift: float) -> None:
    rng = np.random.default_rng(0)
    hits, by_ratio = [], {}
    for case in calibration_cases(144, shift=shift):
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
