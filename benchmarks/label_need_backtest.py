"""Backtest of the labels-needed estimate: how wrong is "≈ N labelled images (90% interval a–b)"?

    .venv/bin/python benchmarks/label_need_backtest.py [--quick] [--seeds 0,1,2] [--targets 5]
                                                       [--analyse-only]

For each shared set and seed it runs (or resumes) one `fewlabel curve` run folder, then pretends only
the smaller sizes had been run (``--fit-max`` per class): the estimator of
``fewlabel.report.label_need`` fits them and predicts how many labelled images per class reach each
target that the larger sizes actually reach. The truth is read off the full measured curve (mean
over repeats, interpolated in log n). Prints, per set, seed and target: truth, estimate, 90%
interval, relative error, and how the interval stands (``curve_simulation.outcome``: covered by a
closed interval, open above the cap, missed low, missed high, no interval; an open interval is not
counted as a hit); then the median relative error and those counts, next to a plain unweighted
power-law fit to the medians (the previous method) for comparison.

Protocol (reduced for CPU): scratch only, small images, few epochs; PBC-8 (test 50 per class) and
BCCD (basophil dropped, smear-grouped, test 25%). Run folders stay in runs/ (not committed).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, SHARED_DATASETS, print_table

SETS: dict[str, dict[str, Any]] = {
    "pbc": {"data": "pbc_leukocytes_8class", "sizes": "1,2,3,5,7,10,15,25,40", "fit_max": 10,
            "protocol": {"test_size": 50}},
    "bccd": {"data": "bccd_wbc_fewshot/labelled", "sizes": "1,2,3,4,6,8,12", "fit_max": 4,
             "protocol": {"test_size": 0.25, "group_pattern": r"(BloodImage_\d+)",
                          "drop_classes": ["basophil"]}},
}


def run_set(name: str, seed: int, args: argparse.Namespace) -> Path:
    """Run (or resume) the curve of one set and seed; return its run folder."""
    from fewlabel.experiments import run_curve

    spec = SETS[name]
    out = REPO / "runs" / f"label_need_{name}_s{seed}{'_quick' if args.quick else ''}"
    sizes = "1,2,3,5" if args.quick else spec["sizes"]
    repeats = 2 if args.quick else args.repeats
    print(f"{name} seed {seed}: sizes {sizes}, repeats {repeats}, {args.image_size}px, "
          f"{args.max_epochs} epochs -> {out}", flush=True)
    run_curve(SHARED_DATASETS / spec["data"], out, "scratch", sizes, repeats, seed=seed,
              image_size=args.image_size, finetune={"max_epochs": args.max_epochs}, progress=False,
              command=" ".join(sys.argv), **spec["protocol"])
    return out


# The curve families compared side by side on the same resamples (the report uses label_need.SHIFTS).
MODELS: dict[str, dict[str, Any]] = {
    "shipped: power law, c <= 3": {},
    "power law, c <= 1": {"exponents": np.geomspace(0.05, 1.0, 80)},
    "shifted (d = 0, 1, 2, 4), c <= 1": {"shifts": (0.0, 1.0, 2.0, 4.0),
                                         "exponents": np.geomspace(0.05, 1.0, 80)},
    "shifted (d = 0, 1, 2, 4), c <= 3": {"shifts": (0.0, 1.0, 2.0, 4.0)},
}


def analyse(run_dir: Path, fit_max: int, targets_per_run: int, n_boot: int) -> list[dict[str, Any]]:
    """One record per target: truth (full curve), estimate and interval (sizes <= fit_max only)."""
    from fewlabel.experiments.run_view import RunView
    from fewlabel.report.curve_simulation import outcome
    from fewlabel.report.curves import curves, fit_power_law, size_to_target
    from fewlabel.report.label_need import MAX_EXTRAPOLATION, estimate_need, observed_need
    from fewlabel.report.run_data import curve_bootstrap

    run = RunView(run_dir)
    rows = run.rows()
    boot = curve_bootstrap(run, rows, "roc_auc", n_boot=n_boot, seed=0)["scratch"]
    # the truth below is read off this same test set: its own sampling noise is shared, not an error
    fixed = curve_bootstrap(run, rows, "roc_auc", n_boot=n_boot, seed=0, test_set_fixed=True)["scratch"]
    sizes = np.asarray(boot.sizes)
    small = sizes <= fit_max
    if small.sum() < 3 or small.all():
        return []
    full_curve = boot.point
    reached_small = float(np.max(full_curve[small]))
    top = float(np.max(full_curve[~small]))
    if top <= reached_small + 0.005:
        return [{"run": run_dir.name, "target": float("nan"), "note": "larger sizes do not improve"}]
    targets = np.linspace(reached_small, top, targets_per_run + 2)[1:-1]
    # the old estimator: unweighted a - b n^-c on the medians of the small sizes
    old_points = [p for p in curves(rows, "roc_auc")["scratch"] if p.n_per_class <= fit_max]
    old_fit = fit_power_law(old_points)
    cap = MAX_EXTRAPOLATION * float(sizes[small][-1])
    out = []
    for target in targets:
        truth = observed_need(sizes, full_curve, float(target))
        est = estimate_need(boot.subset(small), float(target), chance=0.5)
        old = size_to_target(old_points, float(target), old_fit).n
        models = {name: estimate_need(boot.subset(small), float(target), chance=0.5, **options)
                  for name, options in MODELS.items()}
        models_fixed = {name: estimate_need(fixed.subset(small), float(target), chance=0.5, **options)
                        for name, options in MODELS.items()}
        out.append({"run": run_dir.name, "target": float(target), "truth": truth, "estimate": est.n,
                    "fit_max": float(sizes[small][-1]),
                    "low": est.low, "high": est.high, "how": est.how, "old": old,
                    "outcome": outcome(est, truth, cap),
                    "models": {k: (e.n, e.low, e.high, outcome(e, truth, cap)) for k, e in models.items()},
                    "models_fixed": {k: (e.n, e.low, e.high, outcome(e, truth, cap))
                                     for k, e in models_fixed.items()}})
    return out


def _coverage_ci(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a coverage rate: with tens of cases, 100% and 85% can both be a
    90% interval working as stated."""
    from scipy.stats import beta

    alpha = (1 - level) / 2
    lo = 0.0 if hits == 0 else float(beta.ppf(alpha, hits, n - hits + 1))
    hi = 1.0 if hits == n else float(beta.ppf(1 - alpha, hits + 1, n - hits))
    return lo, hi


def _rel(pred: float | None, truth: float) -> float:
    return float("nan") if pred is None or not math.isfinite(pred) else abs(pred - truth) / truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="pbc,bccd")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--targets", type=int, default=3, help="targets per run, between what the small "
                    "sizes reach and what the largest reaches")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--fit-max", type=int, default=None, help="fit on sizes up to this (default per set: "
                    "pbc 10, bccd 4)")
    ap.add_argument("--analyse-only", action="store_true", help="no training: analyse existing folders")
    ap.add_argument("--run-only", action="store_true", help="run the curves, analyse nothing")
    ap.add_argument("--quick", action="store_true",
                    help="tiny grid (sizes 1,2,3,5, 2 repeats, seed 0, 3 epochs): proves the script runs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.max_epochs = "0", 3
    if not SHARED_DATASETS.is_dir():
        print(f"skipped: {SHARED_DATASETS} is not present")
        return 0
    records = []
    for name in args.sets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            out = REPO / "runs" / f"label_need_{name}_s{seed}{'_quick' if args.quick else ''}"
            if not args.analyse_only:
                out = run_set(name, seed, args)
            if not (out / "run.json").exists():
                print(f"{out}: no run folder, skipped")
                continue
            if args.run_only:
                continue
            fit_max = 2 if args.quick else (args.fit_max or SETS[name]["fit_max"])
            records += [{"set": name, "seed": seed, **r}
                        for r in analyse(out, fit_max, args.targets, args.n_boot)]
    table, errors, olds, covered, outcomes = [], [], [], [], []
    for r in records:
        if not math.isfinite(r.get("target", float("nan"))):
            table.append([r["set"], str(r["seed"]), "—", "—", "—", "—", "—", "—", "—", r["note"]])
            continue
        rel, rel_old = _rel(r["estimate"], r["truth"]), _rel(r["old"], r["truth"])
        hit = r["outcome"] in ("covered", "open")  # contains the truth, if only as "more than"
        errors.append(rel)
        olds.append(rel_old)
        covered.append(hit)
        outcomes.append(r["outcome"])
        interval = f"{r['low']:.1f}–{r['high']:.1f}" if r["low"] is not None and r["high"] is not None else (
            f"{r['low']:.1f}–>cap" if r["low"] is not None else "—")
        table.append([r["set"], str(r["seed"]), f"{r['target']:.3f}", f"{r['truth']:.1f}",
                      f"{r['truth'] / r['fit_max']:.1f}×",
                      "—" if r["estimate"] is None else f"{r['estimate']:.1f}", interval,
                      "—" if not math.isfinite(rel) else f"{rel:.0%}",
                      r["outcome"] if hit else r["outcome"].upper(),
                      "—" if not math.isfinite(rel_old) else f"{rel_old:.0%}"])
    print()
    print_table(["set", "seed", "target AUC", "truth n", "truth / largest fitted", "estimate", "90% interval",
                 "rel. error", "interval vs truth", "old fit rel. error"], table)
    if errors:
        e, o = np.asarray(errors), np.asarray(olds)
        with np.errstate(all="ignore"):
            mine = np.nanmedian(e) if np.isfinite(e).any() else float("nan")
            theirs = np.nanmedian(o) if np.isfinite(o).any() else float("nan")
        cov_lo, cov_hi = _coverage_ci(int(np.sum(covered)), len(covered))
        # a refused or missing estimate counts as an infinite error in the second median
        counts = {k: outcomes.count(k) for k in ("covered", "open", "missed low", "missed high",
                                                 "no interval")}
        print(f"\n{len(errors)} cases: median relative error {mine:.0%} over the {int(np.isfinite(e).sum())} "
              f"estimated (refused / not reached: {int(np.isnan(e).sum())}; counting those as misses: "
              f"{np.median(np.where(np.isfinite(e), e, np.inf)):.0%}); 90% interval: closed and containing "
              f"the truth in {counts['covered']}, open above the cap with the truth at or above its lower "
              f"end in {counts['open']}, missed below in {counts['missed low']}, above in "
              f"{counts['missed high']}, no interval in {counts['no interval']} (containing it, open or "
              f"closed: {np.mean(covered):.0%}, 95% CI {cov_lo:.0%}–{cov_hi:.0%}); old unweighted fit to "
              f"the medians: median relative error {theirs:.0%} over {int(np.isfinite(o).sum())} estimated")
        print("(cases from one run share its curve: the interval on the coverage is optimistic)\n")
        print_table(["curve family (same resamples)", "median rel. error",
                     "covered (closed) / open / missed", "test set fixed: covered / open / missed"],
                    [_model_row(name, [r for r in records if math.isfinite(r.get("target", math.nan))])
                     for name in MODELS])
    return 0


def _model_row(name: str, records: list[dict[str, Any]]) -> list[str]:
    errs = np.asarray([_rel(r["models"][name][0], r["truth"]) for r in records])
    estimated = np.isfinite(errs)
    med = f"{np.nanmedian(errs):.0%} ({int(estimated.sum())} estimated)" if estimated.any() else "—"
    row = [name, med]
    for key in ("models", "models_fixed"):
        got = [r[key][name][3] for r in records]
        row.append(f"{got.count('covered')} / {got.count('open')} / "
                   f"{len(got) - got.count('covered') - got.count('open')} of {len(got)}")
    return row


if __name__ == "__main__":
    sys.exit(main())
