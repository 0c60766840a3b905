"""How often does the labels-needed interval contain the true need, and how does it miss? Simulated
curves, known truth.

    .venv/bin/python benchmarks/label_need_calibration.py [--quick] [--write]
    .venv/bin/python benchmarks/label_need_calibration.py --calibrate --seeds 100 --cases 864 --n-boot 1000
    .venv/bin/python benchmarks/label_need_calibration.py --alternatives [--family "late start" --strength 2]

Curves come from ``fewlabel.report.curve_simulation``: a known true curve plus repeat and test-set
noise, resampled through the package's bootstrap plan, with the true need 1.5×, 2.5× or 4× past the
largest size run (the estimator's cap is 5×). Three families of true curve:

- power law ``a - b n^-c``: the estimator's own model (well-specified);
- late start, shift d = 1, 2, 4: ``a - b (n + d)^-c``, lagging its power law at the smallest sizes
  (a later elbow); the power law fitted to the small sizes over-estimates the need;
- slowing, drift δ = 0.2, 0.4, 0.8: the exponent decays as ``c n^-δ``, so the curve approaches its
  plateau more slowly than the power law of its small sizes; that fit under-estimates the need (more
  than on power laws), though its intervals, mostly open above the cap, rarely miss above.

Each answer counts as exactly one of: covered (a closed interval contains the truth), open (open above
the cap, truth at or above its lower end: right only as "more than"), missed low (truth below the
lower end), missed high (truth above the upper end), no interval (the curve was not fitted). The
nominal level is 90%: each end should miss at most 5% of the time. The table shows the shipped
interval (lower end at ``label_need.LOWER_TAIL``) and, for the lower end, the previous symmetric
5th percentile on the same curves.

``--write`` stores the table in ``src/fewlabel/report/label_need_coverage.py``, which the report
quotes; run it (without ``--quick``) whenever the estimator changes. ``--calibrate`` finds the lower
tail: on power-law curves, the largest percentile (in steps of 0.5 points) whose lower end misses at
most 5% of the time with 95% confidence; run it on seeds the table does not use. ``--alternatives``
compares other interval constructions on one family (bias-corrected percentile, profile likelihood
ratio, exponent bounded by 1, shifted curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from statistics import NormalDist

import numpy as np

from fewlabel.report.curve_simulation import (
    FAMILIES,
    OUTCOMES,
    RATIOS,
    CalibrationCase,
    calibration_cases,
    outcome,
    simulate_curve,
    simulated_outcomes,
)
from fewlabel.report.label_need import (
    EXPONENTS,
    INTERVAL_LEVEL,
    LOWER_TAIL,
    MAX_EXTRAPOLATION,
    SHIFTS,
    NeedEstimate,
    estimate_need,
    fit_curves,
)

from _common import REPO, print_table

SYMMETRIC = (1 - INTERVAL_LEVEL) / 2  # the previous lower end: the 5th percentile
GRID: tuple[tuple[str, float], ...] = (
    ("power law", 0.0),
    ("late start", 1.0), ("late start", 2.0), ("late start", 4.0),
    ("slowing", 0.2), ("slowing", 0.4), ("slowing", 0.8),
)
COVERAGE_MODULE = REPO / "src" / "fewlabel" / "report" / "label_need_coverage.py"


def _pct(k: int, n: int) -> str:
    return f"{k / n:.1%} ({k})" if n else "—"


def measure(family: str, strength: float, count: int, n_boot: int, seeds: list[int]
            ) -> dict[str, object]:
    """Outcome counts of the shipped interval and the lower-end misses of the symmetric one, over
    ``count`` cases per seed; per extrapolation distance too; and the point estimates' median
    estimate / truth."""
    counts = dict.fromkeys(OUTCOMES, 0)
    by_ratio: dict[float, dict[str, int]] = {r: dict.fromkeys(OUTCOMES, 0) for r in RATIOS}
    old_low, ratios = 0, []
    for seed in seeds:
        cases = calibration_cases(count, family, strength)
        answers = simulated_outcomes(cases, seed, n_boot, (None, SYMMETRIC))
        for case, row in zip(cases, answers, strict=True):
            (est, got), (_, old) = row
            counts[got] += 1
            by_ratio[min(RATIOS, key=lambda r: abs(r * case.sizes[-1] - case.true_need))][got] += 1
            old_low += old == "missed low"
            if est.n is not None and est.how == "extrapolated":
                ratios.append(est.n / case.true_need)
    return {"family": family, "strength": strength, "cases": count * len(seeds), **counts,
            "missed low, 5th percentile": old_low, "by_ratio": by_ratio,
            "median estimate / truth": float(np.median(ratios)) if ratios else math.nan,
            "estimated": len(ratios)}


def _label(family: str, strength: float) -> str:
    return {"power law": "power law (well-specified)", "late start": f"late start, shift {strength:g}",
            "slowing": f"slowing, drift {strength:g}"}[family]


def print_coverage(rows: list[dict[str, object]]) -> None:
    table = []
    for r in rows:
        n = int(r["cases"])
        table.append([_label(str(r["family"]), float(r["strength"])), str(n), _pct(int(r["covered"]), n),
                      _pct(int(r["open"]), n), _pct(int(r["missed low"]), n), _pct(int(r["missed high"]), n),
                      _pct(int(r["no interval"]), n), _pct(int(r["missed low, 5th percentile"]), n),
                      f"{r['median estimate / truth']:.2f} ({r['estimated']})"])
    print_table(["true curve", "cases", "covered (closed)", "open above cap", "missed low", "missed high",
                 "no interval", "missed low at the 5th pct (previous)",
                 "median estimate / truth (estimated)"], table)
    print(f"\nPer extrapolation distance (true need / largest size run), {_label('power law', 0)}:")
    well = next(r for r in rows if r["family"] == "power law")
    by: dict[float, dict[str, int]] = well["by_ratio"]  # type: ignore[assignment]
    print_table(["true need / largest size", "cases", "covered", "open", "missed low", "missed high"],
                [[f"{k:g}×", str(sum(v.values())), *(_pct(v[o], sum(v.values())) for o in OUTCOMES[:4])]
                 for k, v in by.items()])


def module_text(rows: list[dict[str, object]], command: str, seeds: list[int], cases: int, n_boot: int
                ) -> str:
    """The source of ``report/label_need_coverage.py`` for ``rows`` measured by ``command``."""
    lines = [
        '"""What ``benchmarks/label_need_calibration.py`` measured of the labels-needed interval on',
        "simulated curves with a known answer; written by that script (``--write``), quoted by the report.",
        "Regenerate it with ``COMMAND`` whenever the estimator changes (a test checks that the estimator's",
        'constants match those it was measured with)."""',
        "",
        "from __future__ import annotations",
        "",
        f"COMMAND = {json.dumps(command)}",
        f"SEEDS = {tuple(seeds)!r}",
        f"CASES = {cases}  # per family and strength, over the seeds",
        f"N_BOOT = {n_boot}",
        f"RATIOS = {RATIOS!r}  # true need / largest size run",
        "# the estimator's constants when measured",
        f"INTERVAL_LEVEL = {INTERVAL_LEVEL!r}",
        f"LOWER_TAIL = {LOWER_TAIL!r}",
        f"MAX_EXTRAPOLATION = {MAX_EXTRAPOLATION!r}",
        "# per true-curve family and strength, how many answers ended each way (curve_simulation.outcome),",
        "# and how many the previous lower end (the symmetric 5th percentile) missed below",
        "ROWS: tuple[dict[str, str | float | int], ...] = (",
    ]
    for r in rows:
        groups = (("family", "strength", "cases"), OUTCOMES, ("missed low, 5th percentile",))
        parts = [", ".join(f"{json.dumps(k)}: {json.dumps(r[k])}" for k in g) for g in groups]
        lines += ["    {" + parts[0] + ",", "     " + parts[1] + ",", "     " + parts[2] + "},"]
    return "\n".join([*lines, ")", ""])


def write_module(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    total = args.cases * len(args.seed_list)
    COVERAGE_MODULE.write_text(module_text(rows, args.command, args.seed_list, total, args.n_boot))
    print(f"\nwrote {COVERAGE_MODULE.relative_to(REPO)}")


def calibrate(count: int, n_boot: int, seeds: list[int]) -> None:
    """The largest lower-tail percentile (step 0.005) whose lower end misses at most 5% of power-law
    cases, with 95% confidence (one-sided Clopper-Pearson): the margin keeps a rate measured on a few
    hundred cases from landing above 5% on the next ones."""
    from scipy.stats import beta

    levels = np.arange(0.005, SYMMETRIC + 1e-9, 0.005)
    missed, total = np.zeros(len(levels)), 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for case in calibration_cases(count):
            curve = simulate_curve(rng, case.truth, case.sizes, n_boot=n_boot, repeat_sd=case.repeat_sd,
                                   test_sd=case.test_sd)
            est = estimate_need(curve, case.target, chance=0.5)
            total += 1
            if est.fit is None or est.how == "measured":  # the lower tail applies to fitted answers only
                missed += outcome(est, case.true_need, MAX_EXTRAPOLATION * case.sizes[-1]) == "missed low"
                continue
            ns = np.where(np.isfinite(est.fit.inverse(case.target)[1:]), est.fit.inverse(case.target)[1:],
                          np.inf)
            missed += case.true_need < np.quantile(ns, levels, method="inverted_cdf")
    rate = missed / total
    bound = np.array([1.0 if k >= total else float(beta.ppf(0.95, k + 1, total - k)) for k in missed])
    print_table(["lower end at percentile", "missed low", "95% upper bound"],
                [[f"{q:.1%}", f"{m:.1%}", f"{b:.1%}"] for q, m, b in zip(levels, rate, bound, strict=True)])
    ok = levels[bound <= 0.05]
    print(f"\n{total} power-law cases, seeds {seeds}, {n_boot} resamples: largest lower tail whose miss "
          f"rate is at most 5% with 95% confidence: {ok[-1]:.3f}" if len(ok) else "\nno level meets 5%")


# --- other interval constructions, for --alternatives ---------------------------------------------

Interval = tuple[float | None, float | None]
BOUNDED = np.geomspace(0.05, 1.0, 80)  # exponents at most 1: the 1/n rate, a prior the alternatives try
SHIFTED = (0.0, 1.0, 2.0, 4.0)  # curves that may lag their power law by up to 4 images per class


def _bias_corrected(ns: np.ndarray, limit: float) -> Interval:
    point, boot = ns[0], np.sort(ns[1:])
    below = (np.sum(boot < point) + 0.5 * np.sum(boot == point)) / len(boot)
    z0 = NormalDist().inv_cdf(min(max(below, 1 / len(boot)), 1 - 1 / len(boot)))
    za = NormalDist().inv_cdf((1 - INTERVAL_LEVEL) / 2)
    q_lo, q_hi = NormalDist().cdf(2 * z0 + za), NormalDist().cdf(2 * z0 - za)
    lo = boot[min(int(q_lo * len(boot)), len(boot) - 1)]
    hi = boot[min(max(math.ceil(q_hi * len(boot)) - 1, 0), len(boot) - 1)]
    return (None if lo > limit else float(lo)), (None if not math.isfinite(hi) or hi > limit else float(hi))


def _sse_free(sizes: np.ndarray, values: np.ndarray, w: np.ndarray) -> np.ndarray:
    fit = fit_curves(sizes, values, w, chance=0.5)
    pred = np.stack([fit(sizes, row) for row in range(len(fit.a))])
    return (w * (np.atleast_2d(values) - pred) ** 2).sum(-1)


def _sse_through(sizes: np.ndarray, values: np.ndarray, w: np.ndarray, ns: np.ndarray, target: float
                 ) -> np.ndarray:
    """(rows, len(ns)): least weighted SSE of a constrained curve through (n, target), over c and b."""
    y = np.atleast_2d(values)[:, None, None, :]
    c = np.repeat(EXPONENTS, len(SHIFTS))[:, None]  # the estimator's grid of exponents × shifts
    d = np.tile(np.asarray(SHIFTS), len(EXPONENTS))[:, None]
    x = ((sizes[None, :] + d) / (1 + d)) ** -c  # (K, S), 1 at n = 1
    xn = np.where(np.isinf(ns)[None, :], 0.0, ((np.asarray(ns)[None, :] + d) / (1 + d)) ** -c)  # (K, N)
    z = (x[:, None, :] - xn[:, :, None])[None]  # through (n, t): m(s) = t - b z
    b = (w * z * (target - y)).sum(-1) / (w * z * z).sum(-1)
    with np.errstate(divide="ignore"):
        top = np.minimum(np.where(xn > 0, (1.0 - target) / xn, np.inf),
                         np.where(xn < 1, (target - 0.5) / (1 - xn), np.inf))
    b = np.clip(b, 0.0, top[None])
    return (w * (y - target + b[..., None] * z) ** 2).sum(-1).min(axis=1)


def _profile(curve, target: float, est: NeedEstimate, limit: float) -> Interval:
    sizes = np.asarray(curve.sizes, dtype=np.float64)
    w = 1.0 / np.maximum(np.nanvar(curve.boot, axis=0), 1e-6)
    grid = np.concatenate([np.geomspace(sizes[-1], limit, 160), [np.inf]])
    rise = _sse_through(sizes, curve.point, w, grid, target)[0] - _sse_free(sizes, curve.point, w)[0]
    centre = np.array([est.fit.inverse(target)[0]])
    boot_rise = _sse_through(sizes, curve.boot, w, centre, target)[:, 0] - _sse_free(sizes, curve.boot, w)
    inside = rise <= np.quantile(boot_rise, INTERVAL_LEVEL)
    if not inside.any():
        return None, None
    return float(grid[inside][0]), (None if inside[-2:].any() else float(grid[inside][-1]))


def alternatives(cases: list[CalibrationCase], n_boot: int, seed: int) -> None:
    methods = ("shipped", "symmetric 5th-95th percentile (previous)", "bias-corrected percentile (BC)",
               "profile likelihood ratio", "percentile, c <= 1", "percentile, shifted, c <= 1")
    tally = {m: dict.fromkeys(OUTCOMES, 0) for m in methods}
    rng = np.random.default_rng(seed)
    for case in cases:
        curve = simulate_curve(rng, case.truth, case.sizes, n_boot=n_boot, repeat_sd=case.repeat_sd,
                               test_sd=case.test_sd)
        limit = MAX_EXTRAPOLATION * case.sizes[-1]
        est = estimate_need(curve, case.target, chance=0.5)
        answers = {methods[0]: est,
                   methods[1]: estimate_need(curve, case.target, chance=0.5, lower_tail=SYMMETRIC),
                   methods[4]: estimate_need(curve, case.target, chance=0.5, exponents=BOUNDED),
                   methods[5]: estimate_need(curve, case.target, chance=0.5, shifts=SHIFTED,
                                             exponents=BOUNDED)}
        ns = None if est.fit is None or est.how == "measured" else est.fit.inverse(case.target)
        if ns is not None and math.isfinite(ns[0]):  # the two need a fitted point; else they give the shipped
            for m, (lo, hi) in ((methods[2], _bias_corrected(ns, limit)),
                                (methods[3], _profile(curve, case.target, est, limit))):
                answers[m] = dataclasses.replace(est, low=lo, high=hi)
        else:
            answers[methods[2]] = answers[methods[3]] = est
        for m in methods:
            tally[m][outcome(answers[m], case.true_need, limit)] += 1
    n = len(cases)
    print_table(["interval", "cases", *OUTCOMES], [[m, str(n), *(_pct(tally[m][o], n) for o in OUTCOMES)]
                                                  for m in methods])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=432, help="cases per family, strength and seed")
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--quick", action="store_true", help="144 cases, 200 resamples, seed 0 "
                    "(under a minute on 2 cores)")
    ap.add_argument("--write", action="store_true", help="store the table in report/label_need_coverage.py")
    ap.add_argument("--calibrate", action="store_true", help="find the lower tail on power-law curves")
    ap.add_argument("--alternatives", action="store_true", help="compare interval constructions on "
                    "--family / --strength (first seed)")
    ap.add_argument("--family", default="power law", choices=FAMILIES)
    ap.add_argument("--strength", type=float, default=0.0)
    ap.add_argument("--exponents", default="0.3,0.6,1.0", help="true curves' exponents for --alternatives "
                    "(1.5: curves steeper than the bound of 1 that two alternatives assume)")
    args = ap.parse_args()
    if args.quick:
        if args.write:
            ap.error("--write stores what the report quotes: not from a --quick run")
        args.cases, args.n_boot, args.seeds = 144, 200, "0"
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.command = "benchmarks/label_need_calibration.py " + " ".join(a for a in sys.argv[1:])
    start = time.time()
    if args.calibrate:
        calibrate(args.cases, args.n_boot, args.seed_list)
    elif args.alternatives:
        exponents = tuple(float(c) for c in args.exponents.split(","))
        print(f"{args.cases} simulated curves ({_label(args.family, args.strength)}, exponents "
              f"{args.exponents}), {args.n_boot} resamples, seed {args.seed_list[0]}; "
              f"nominal {INTERVAL_LEVEL:.0%}\n")
        cases = calibration_cases(args.cases, args.family, args.strength, exponents)
        alternatives(cases, args.n_boot, args.seed_list[0])
    else:
        print(f"{args.cases} simulated curves per true curve and seed (seeds {args.seeds}), {args.n_boot} "
              f"resamples each; true need {', '.join(f'{r:g}' for r in RATIOS)}× the largest size run, "
              f"cap {MAX_EXTRAPOLATION:g}×; nominal {INTERVAL_LEVEL:.0%} (each end misses ≤ 5%), lower end "
              f"at the {LOWER_TAIL:.1%} percentile\n", flush=True)
        rows = [measure(family, strength, args.cases, args.n_boot, args.seed_list)
                for family, strength in GRID]
        print_coverage(rows)
        if args.write:
            write_module(rows, args)
    print(f"\n({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
