"""Expected calibration error, its interval from the shared bootstrap, and the report's Calibration
section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from report_fixtures import make_run

from fewlabel.evaluate.calibration import (
    ece_summary,
    ece_under_weights,
    expected_calibration_error,
    per_repeat_ece,
    reliability_bins,
)
from fewlabel.evaluate.cluster_bootstrap import draw_plan
from fewlabel.experiments.run_view import RunView
from fewlabel.report.analysis import analyse
from fewlabel.report.html import render, report_context

# Four images, two classes; top-class confidences 0.95 (right), 0.95 (wrong), 0.75 (right), 0.62
# (wrong) fall in bins 14, 14, 11 and 9 of 15. By hand:
# ECE = 2/4·|0.5 − 0.95| + 1/4·|1 − 0.75| + 1/4·|0 − 0.62| = 0.225 + 0.0625 + 0.155 = 0.4425.
TINY_Y = np.array([0, 1, 1, 1])
TINY_P = np.array([[0.95, 0.05], [0.95, 0.05], [0.25, 0.75], [0.62, 0.38]])
TINY_ECE = 0.4425


def test_ece_of_calibrated_probabilities_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=60000)
    y = (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)  # y ~ Categorical(p)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p, kind="classwise") < 0.01
    # the same probabilities against labels they do not predict: far from calibrated
    assert expected_calibration_error(rng.permutation(y), p) > 0.2


def test_ece_hand_computed_on_a_tiny_example_and_an_overconfident_model() -> None:
    assert expected_calibration_error(TINY_Y, TINY_P) == pytest.approx(TINY_ECE, abs=1e-12)
    # classwise, by hand: class 0's probabilities 0.95, 0.95, 0.25, 0.62 give (0.9 + 0.25 + 0.62) / 4,
    # class 1's 0.05, 0.05, 0.75, 0.38 the same
    assert expected_calibration_error(TINY_Y, TINY_P, kind="classwise") == pytest.approx(TINY_ECE, abs=1e-12)
    bins = reliability_bins(TINY_Y, [TINY_P])
    assert bins.index.tolist() == [9, 11, 14] and bins.count.tolist() == [1, 1, 2]
    assert bins.accuracy.tolist() == [0.0, 1.0, 0.5]
    assert bins.confidence == pytest.approx([0.62, 0.75, 0.95])
    assert bins.ece == pytest.approx(TINY_ECE)
    # pooling two models: every image of each counts, empty bins stay out
    assert reliability_bins(TINY_Y, [TINY_P, TINY_P]).count.tolist() == [2, 2, 4]

    # says 0.99 every time, right 60 times in 100: ECE = 0.99 − 0.60
    y = np.array([0] * 60 + [1] * 40)
    p = np.tile([0.99, 0.01], (100, 1))
    assert expected_calibration_error(y, p) == pytest.approx(0.39, abs=1e-12)


def test_ece_under_bootstrap_weights_is_the_ece_of_the_resampled_images() -> None:
    w = np.array([[2, 0, 1, 1], [0, 3, 0, 1], [1, 1, 1, 1]])
    got = ece_under_weights(w, TINY_Y, TINY_P)
    for row, value in zip(w, got, strict=True):
        idx = np.repeat(np.arange(4), row)
        assert value == pytest.approx(expected_calibration_error(TINY_Y[idx], TINY_P[idx]), abs=1e-12)
    with pytest.raises(ValueError, match="unknown ECE kind"):
        ece_under_weights(w, TINY_Y, TINY_P, kind="marginal")


def _identical_groups(p0: list[float], p1: list[float], per_class: int = 10):
    """A test set of one-image groups where every class-0 image has probabilities ``p0`` and every
    class-1 image ``p1``: a class-stratified resample of groups cannot change its ECE."""
    y = np.repeat([0, 1], per_class)
    groups = np.array([f"g{i}" for i in range(len(y))])
    return y, groups, np.where(y[:, None] == 0, p0, p1)


def test_ci_has_width_zero_when_every_repeat_and_group_is_identical() -> None:
    # class 0 right at 0.85 (bin 12), class 1 wrong at 0.7 (bin 10): ECE = (0.15 + 0.7) / 2
    y, groups, p = _identical_groups([0.85, 0.15], [0.7, 0.3])
    plan = draw_plan(groups, y, n_repeats=3, n_boot=300, seed=1)
    s = ece_summary(plan, per_repeat_ece(plan, y, {0: p, 1: p, 2: p}))
    assert s["median"] == pytest.approx(0.425, abs=1e-12) and s["mean"] == pytest.approx(0.425, abs=1e-12)
    assert s["ci_low"] == pytest.approx(0.425, abs=1e-12) and s["ci_high"] == pytest.approx(0.425, abs=1e-12)
    assert s["n_repeats"] == 3


def test_ci_contains_the_point_estimate_and_widens_with_the_test_groups() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 3)
    y = np.repeat(np.arange(30) % 2, 3)
    probas = {}
    for r in range(6):
        logit = 1.5 * (2 * y - 1) + rng.normal(0, 2.0, len(y))  # scaled up: overconfident
        p1 = 1 / (1 + np.exp(-2.5 * logit))
        probas[r] = np.stack([1 - p1, p1], axis=1)
    plan = draw_plan(groups, y, n_repeats=6, n_boot=1000, seed=0)
    s = ece_summary(plan, per_repeat_ece(plan, y, probas))
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert s["q1"] <= s["median"] <= s["q3"]
    assert s["ci_high"] - s["ci_low"] > 0.02  # 30 patients do not pin an ECE down


def test_ci_contains_the_ece_of_a_well_calibrated_model_despite_the_bootstrap_bias() -> None:
    # A resample's ECE runs higher than its sample's: the plain percentile interval of a calibrated
    # model often lies wholly above the model's own ECE; the re-centred one must not.
    rng = np.random.default_rng(0)
    plain_missed = 0
    for i in range(10):
        p1 = rng.random(400)
        y = (rng.random(400) < p1).astype(int)
        probas = {r: np.stack([1 - q, q], axis=1)
                  for r in range(5) for q in [np.clip(p1 + rng.normal(0, 0.02, 400), 0.001, 0.999)]}
        plan = draw_plan(np.arange(400), y, n_repeats=5, n_boot=500, seed=i)
        m = per_repeat_ece(plan, y, probas)
        s = ece_summary(plan, m)
        assert s["boot_bias"] > 0 and s["ci_low"] <= s["mean"] <= s["ci_high"]
        plain_missed += np.quantile(m.resampled_mean(plan, 5), 0.025) > s["mean"]
    assert plain_missed >= 1


def test_a_cells_ci_resamples_its_own_repeat_count() -> None:
    # the test set cannot move the ECE (identical groups), so the interval comes from the repeats alone
    y, groups, p_a = _identical_groups([0.85, 0.15], [0.7, 0.3])  # ECE 0.425
    _, _, p_b = _identical_groups([0.95, 0.05], [0.65, 0.35])  # ECE (0.05 + 0.65) / 2 = 0.35
    plan = draw_plan(groups, y, n_repeats=6, n_boot=4000, seed=2)  # the run's most: 6 repeats
    m = per_repeat_ece(plan, y, {0: p_a, 4: p_b})  # this cell finished 2
    s = ece_summary(plan, m)
    assert s["n_repeats"] == 2 and s["mean"] == pytest.approx((0.425 + 0.35) / 2)
    # two draws of two repeats land on both ECEs with probability 1/4 each: the 95% CI is their range
    assert s["ci_low"] == pytest.approx(0.35) and s["ci_high"] == pytest.approx(0.425)
    # drawn 6 times (the run's most) the mean would hide that spread: a narrower, wrong interval
    six = np.quantile(m.resampled_mean(plan, 6), [0.025, 0.975])
    assert six[0] > 0.35 + 0.01 and six[1] < 0.425 - 0.01


def test_report_has_a_calibration_section_from_the_shared_plan(tmp_path: Path) -> None:
    root = make_run(tmp_path / "run", strategies=("scratch", "ssl"), sizes=(2, 10), repeats=4, models=False,
                    failed=(("ssl", 10, 3),), missing=())
    ctx = report_context(root, n_boot=200)
    assert list(ctx["sections"]).index("calibration") > list(ctx["sections"]).index("sizes")
    values = ctx["sections"]["calibration"]["values"]
    rows = {(r["strategy"], r["n_per_class"]): r for r in values["calibration_rows"]}
    assert set(rows) == {("scratch", 2), ("scratch", 10), ("ssl", 2), ("ssl", 10)}
    assert rows[("ssl", 10)]["repeats"] == 3 and rows[("scratch", 10)]["repeats"] == 4
    # every interval is the run's one plan resampled with the cell's own repeats
    rb = analyse(RunView(root), n_boot=200).bootstrap
    assert rb is not None
    for key, row in rows.items():
        for kind in ("top", "classwise"):
            want = ece_summary(rb.plan, per_repeat_ece(rb.plan, rb.labels, rb.probas[key], kind=kind))
            got = (row[kind]["ci_low"], row[kind]["ci_high"])
            assert got == pytest.approx((want["ci_low"], want["ci_high"]))
            assert row[kind]["ci_low"] <= row[kind]["mean"] <= row[kind]["ci_high"]
    html = render(ctx)
    assert '<h2 id="calibration">Calibration</h2>' in html
    assert '<a href="#calibration">Calibration</a>' in html
    assert 'alt="reliability diagrams' in html and "expected calibration error" in html
    assert "test groups (patients" in html and "own finished repeats" in html

    old = make_run(tmp_path / "old", strategies=("scratch",), sizes=(2,), repeats=2, models=False,
                   failed=(), missing=(), probas=False)
    assert "calibration needs them" in render(report_context(old, n_boot=50))
