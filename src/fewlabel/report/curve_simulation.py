"""Learning curves simulated from a known true curve, bootstrapped exactly as a run's curves are: the
ground truth against which the labels-needed interval is calibrated.

Three families of true curve, each with m(1) = 0.70 (well above chance, far below the plateau):

- ``power law``: ``a - b n**(-c)``, the estimator's own model (well-specified);
- ``late start`` (strength = shift ``d``): ``a - b (n + d)**(-c)``, a curve that rises more slowly
  at the smallest sizes than the power law its later part follows (its elbow comes later). Fitted on
  the small sizes, the power law under-predicts the later gains: the true need lies *below* it;
- ``slowing`` (strength = drift ``δ``): the gap to the plateau shrinks with a local exponent that
  decays as ``c n**(-δ)``, i.e. ``a - b exp(-c (1 - n**(-δ)) / δ)``: the curve approaches its plateau
  more slowly than the power law of its small sizes predicts, as real curves that level off early do.
  The true need lies *above* the fit.

A simulated cell's metric is the true curve plus two noises, the two a real curve has: the repeat's
own (which labelled images it drew, its seed), independent between repeats and sizes and shrinking
with ``n``; and the test set's (which test groups happen to be in it), a per-group effect shared
across sizes (correlation ``test_corr``: an easy test set is easy for every model) whose mean over
the test set has SD ``test_sd``. The population value of that test effect is zero, so the true need
is the true curve's own crossing of the target. Resamples come from the package's own plan
(``draw_plan``: test groups × repeat slots, the same draws at every size) through ``RepeatMetrics``
and the same means as ``RunBootstrap.curve``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fewlabel.evaluate.cluster_bootstrap import RepeatMetrics, draw_plan
from fewlabel.report.label_need import MAX_EXTRAPOLATION, NeedEstimate, estimate_need
from fewlabel.report.run_data import CurveBootstrap

FAMILIES = ("power law", "late start", "slowing")
START = 0.70  # every simulated curve's value at one labelled image per class


def _log_scale(x: float, drift: float) -> float:
    """``(1 - x**-δ) / δ``: log x bent by the drift (log x itself at δ = 0)."""
    return math.log(x) if drift == 0 else (1.0 - x ** -drift) / drift


@dataclass(frozen=True)
class TrueCurve:
    """``m(n) = a - b * exp(-c * L(n + shift))`` with ``L(x) = (1 - x**-drift) / drift`` (``log x`` at
    drift 0): the population curve a simulation draws around. ``shift = drift = 0`` is the power law
    ``a - b n**(-c)``; a positive ``shift`` is the late-start family, a positive ``drift`` the slowing
    one (module docstring)."""

    a: float
    b: float
    c: float
    shift: float = 0.0
    drift: float = 0.0

    def need(self, target: float) -> float:
        """Labelled images per class at which the population curve reaches ``target`` (inf: never)."""
        if self.a <= target:
            return math.inf
        scale = math.log(self.b / (self.a - target)) / self.c  # the L(n + shift) that reaches it
        if self.drift == 0:
            return math.exp(scale) - self.shift
        if self.drift * scale >= 1.0:  # past the curve's own limit a - b exp(-c / drift)
            return math.inf
        return (1.0 - self.drift * scale) ** (-1.0 / self.drift) - self.shift

    def at(self, n: float) -> float:
        return self.a - self.b * math.exp(-self.c * _log_scale(n + self.shift, self.drift))


def true_curve(family: str, strength: float, a: float, c: float) -> TrueCurve:
    """The family's curve with plateau parameter ``a``, exponent ``c`` at its start, and ``strength``
    (shift for "late start", drift for "slowing", ignored for "power law"), scaled so m(1) = START."""
    shift = strength if family == "late start" else 0.0
    drift = strength if family == "slowing" else 0.0
    if family not in FAMILIES:
        raise ValueError(f"unknown curve family {family!r}; one of {', '.join(FAMILIES)}")
    b = (a - START) * math.exp(c * _log_scale(1.0 + shift, drift))
    return TrueCurve(a, b, c, shift, drift)


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


RATIOS = (1.5, 2.5, 4.0)  # how far past the largest size run the true need lies (the cap is 5×)


def calibration_cases(count: int, family: str = "power law", strength: float = 0.0,
                      exponents: tuple[float, ...] = (0.3, 0.6, 1.0)) -> list[CalibrationCase]:
    """``count`` cases cycling over plateaus, ``exponents``, size grids, noise levels and how far past
    the largest size the truth lies (``RATIOS``); ``family`` and ``strength`` as in ``true_curve``."""
    plateaus = (0.90, 0.97)
    grids = ([1, 2, 3, 5, 7, 10], [1, 2, 3, 4])
    noises = ((0.03, 0.01), (0.015, 0.005))
    out = []
    for i in range(count):
        a, c = plateaus[i % 2], exponents[(i // 2) % len(exponents)]
        sizes, (repeat_sd, test_sd) = grids[(i // 6) % 2], noises[(i // 12) % 2]
        truth = true_curve(family, strength, a, c)
        target = truth.at(RATIOS[(i // 24) % len(RATIOS)] * sizes[-1])
        out.append(CalibrationCase(truth, sizes, target, repeat_sd, test_sd))
    return out


# How an answer stands against the truth: an interval open above the cap is its own outcome, never a hit.
OUTCOMES = ("covered", "open", "missed low", "missed high", "no interval")


def outcome(estimate: NeedEstimate, truth: float, cap: float) -> str:
    """How a labels-needed answer stands against the true need, ``cap`` being the largest size it
    would state:

    - "covered": a closed interval (or "≤ the smallest size run") contains the truth;
    - "open": the interval is open above the cap and the truth is at or above its lower end (or the
      whole interval lies past the cap and so does the truth): right, but only as "more than";
    - "missed low" / "missed high": the truth lies below the lower end / above the upper end;
    - "no interval": none given (a curve too short or ill-behaved to fit)."""
    low, high = estimate.low, estimate.high
    if low is None and high is None:
        if estimate.how == "measured" and estimate.n is not None and estimate.text.startswith("≤"):
            return "covered" if truth <= estimate.n else "missed high"  # reached at the smallest size
        if estimate.fit is None and estimate.how != "measured":
            return "no interval"
    if low is None:  # every plausible answer past the cap: "more than the cap"
        return "open" if truth > cap else "missed low"
    if truth < low:
        return "missed low"
    if high is None:
        return "open"
    return "covered" if truth <= high else "missed high"


def simulated_outcomes(cases: list[CalibrationCase], seed: int, n_boot: int,
                       lower_tails: tuple[float | None, ...] = (None,)
                       ) -> list[list[tuple[NeedEstimate, str]]]:
    """Per case, per lower tail (None: the estimator's own ``LOWER_TAIL``): the labels-needed answer
    for the simulated curve and its ``outcome``. One generator seeded with ``seed`` draws every curve,
    so the same ``cases`` and ``seed`` give the same curves whatever the tails."""
    rng = np.random.default_rng(seed)
    out = []
    for case in cases:
        curve = simulate_curve(rng, case.truth, case.sizes, n_boot=n_boot, repeat_sd=case.repeat_sd,
                               test_sd=case.test_sd)
        cap = MAX_EXTRAPOLATION * case.sizes[-1]
        row = []
        for tail in lower_tails:
            est = estimate_need(curve, case.target, chance=0.5, lower_tail=tail)
            row.append((est, outcome(est, case.true_need, cap)))
        out.append(row)
    return out
