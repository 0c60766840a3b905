"""Learning curves simulated from a known inverse power law, bootstrapped exactly as a run's curves are:
the ground truth against which the labels-needed interval is calibrated.

A simulated cell's metric is the true curve ``a - b n**(-c)`` plus two noises, the two a real curve
has: the repeat's own (which labelled images it drew, its seed), independent between repeats and
sizes and shrinking with ``n``; and the test set's (which test groups happen to be in it), a per-group
effect shared across sizes (correlation ``test_corr``: an easy test set is easy for every model)
whose mean over the test set has SD ``test_sd``. The population value of that test effect is zero, so
the true labels needed is ``(b / (a - target)) ** (1 / c)``. Resamples come from the package's own
plan (``draw_plan``: test groups × repeat slots, the same draws at every size) through
``RepeatMetrics`` and the same means as ``RunBootstrap.curve``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fewlabel.evaluate.cluster_bootstrap import RepeatMetrics, draw_plan
from fewlabel.report.run_data import CurveBootstrap


@dataclass(frozen=True)
class TrueCurve:
    """``m(n) = a - b * (n + shift)**(-c)``: the population curve a simulation draws around. A positive
    ``shift`` is a curve the estimator's model cannot express (slower at the smallest sizes than the
    power law its later part follows): the misspecified case."""

    a: float
    b: float
    c: float
    shift: float = 0.0

    def need(self, target: float) -> float:
        """Labelled images per class at which the population curve reaches ``target`` (inf: never)."""
        return (self.b / (self.a - target)) ** (1.0 / self.c) - self.shift if self.a > target else math.inf

    def at(self, n: float) -> float:
        return self.a - self.b * (n + self.shift) ** (-self.c)


def simulate_curve(rng: np.random.Generator, truth: TrueCurve, sizes: list[int], repeats: int = 6,
                   groups: int = 40, n_boot: int = 300, repeat_sd: float = 0.03, test_sd: float = 0.01,
                   test_corr: float = 0.8) -> CurveBootstrap:
    """One bootstrapped curve: ``repeats`` cells per size scored on one test set of ``groups`` groups.

    ``repeat_sd`` is one repeat's SD at n = 1, falling as n**-0.4 (as measured curves' repeat spread
    does); ``test_sd`` is the SD of the test set's mean effect at every size."""
    s = np.asarray(sizes, dtype=np.float64)
    true = np.array([truth.at(n) for n in s])
    repeat_noise = rng.normal(0.0, 1.0, (repeats, len(s))) * repeat_sd * s ** -0.4
    per_group = test_sd * math.sqrt(groups)
    shared = rng.normal(0.0, 1.0, (groups, 1)) * math.sqrt(test_corr)
    own = rng.normal(0.0, 1.0, (groups, len(s))) * math.sqrt(1.0 - test_corr)
    test_effect = (shared + own) * per_group  # (G, S)
    labels = np.arange(groups) % 2  # two strata, as the plan stratifies groups by class
    plan = draw_plan(np.arange(groups), labels, n_repeats=repeats, n_boot=n_boot,
                     seed=int(rng.integers(0, 2**31)))
    w = plan.weights / plan.weights.sum(axis=1, keepdims=True)  # (B, G)
    cells = []
    for j in range(len(s)):
        point = true[j] + repeat_noise[:, j] + test_effect[:, j].mean()
        boot = true[j] + repeat_noise[None, :, j] + (w @ test_effect[:, j])[:, None]
        cells.append(RepeatMetrics(repeats=list(range(repeats)), point=point, boot=boot))
    return CurveBootstrap(list(map(int, sizes)), np.array([c.point.mean() for c in cells]),
                          np.stack([c.resampled_mean(plan, repeats) for c in cells], axis=1), cells)


@dataclass(frozen=True)
class CalibrationCase:
    """One simulated question: a true curve, the sizes run, the noise, and a target past the largest size."""

    truth: TrueCurve
    sizes: list[int]
    target: float
    repeat_sd: float
    test_sd: float

    @property
    def true_need(self) -> float:
        return self.truth.need(self.target)


def calibration_cases(count: int, shift: float = 0.0, exponents: tuple[float, ...] = (0.3, 0.6, 1.0)
                      ) -> list[CalibrationCase]:
    """``count`` cases cycling over plateaus, ``exponents``, size grids, noise levels and how far past
    the largest size the truth lies (1.5×, 2.5× and 4×; the estimator's cap is 5×); ``shift`` as in
    ``TrueCurve``."""
    plateaus = (0.90, 0.97)
    grids = ([1, 2, 3, 5, 7, 10], [1, 2, 3, 4])
    noises = ((0.03, 0.01), (0.015, 0.005))
    ratios = (1.5, 2.5, 4.0)
    out = []
    for i in range(count):
        a, c = plateaus[i % 2], exponents[(i // 2) % len(exponents)]
        sizes, (repeat_sd, test_sd) = grids[(i // 6) % 2], noises[(i // 12) % 2]
        # m(1) = 0.70: well above chance, far below the plateau
        truth = TrueCurve(a, (a - 0.70) * (1.0 + shift) ** c, c, shift)
        target = truth.at(ratios[(i // 24) % 3] * sizes[-1])
        out.append(CalibrationCase(truth, sizes, target, repeat_sd, test_sd))
    return out
