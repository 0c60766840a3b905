"""Benchmark: the default 2D recipe before and after the CPU speed levers, side by side on the same
draws (same test set, labelled images and seeds), paired.

    .venv/bin/python benchmarks/cpu_speed.py --dataset pbc [--sizes 2,5,10,20] [--repeats 3] [--quick]

Arms (each one ``fewlabel curve`` run folder, ``<out>/<arm>/``, so a stopped benchmark resumes):
  before       the default until the levers: fp32, NCHW, 3 members fine-tuned one after another for
               30 epochs each, 224 px
  default      the house default now (``auto``: bf16 where the CPU computes it natively, channels-last;
               3 members fine-tuned one after another for 20 epochs each; the strategy's 160-px input)
  snapshot     the first fast default: its 3 members snapshots of one cyclic 40-epoch run
  at224        the snapshot default at 224 px: what the smaller input alone costs or gains
  independent  the default at 30 epochs a member
Sizes run in ascending order, and within each size the arms alternate their order, so neither pays
the warm-up or a busier machine more often. A cell's wall and CPU seconds are the cell's own (fit +
scoring), without opening the data.

Prints per size × arm: median accuracy / ROC-AUC, the paired mean difference to ``before`` with its
cluster-bootstrap 95 % CI, median wall and CPU seconds per cell and the speed-up (before's summed
seconds over the arm's, on the cells both finished), and whether the arm is non-inferior (mean ΔAUC
>= -0.005 and mean Δaccuracy >= -0.01).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _paired import difference_cell, draws_of, paired_to_reference

from _common import REPO, add_run_options, open_dataset, print_table, test_size_of, test_words

# The compute the default used before the levers (fp32, NCHW, independent members): base settings.
BEFORE_COMPUTE = {"precision": "fp32", "ensemble_mode": "independent", "channels_last": False}
AT_224 = {"encoder_kwargs": {"input_size": 224}}
EPOCHS_30 = {"finetune": {"max_epochs": 30}}  # the recipe's epochs a member until the default took 20
# arm -> (strategy options, fine-tuning base settings)
ARMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "before": ({**AT_224, **EPOCHS_30}, BEFORE_COMPUTE),
    # the house default now: bf16 where native, channels-last, 3 independent members x 20 epochs, 160 px
    "default": ({}, {}),
    # the first fast default: the 3 members as snapshots of one 40-epoch run (30 + two 5-epoch cycles)
    "snapshot": (EPOCHS_30, {"ensemble_mode": "snapshot"}),
    # the snapshot default's compute at 224 px: what the smaller input alone costs or gains
    "at224": ({**AT_224, **EPOCHS_30}, {"ensemble_mode": "snapshot"}),
    # independent members at 30 epochs each: what the 10 epochs the default leaves out cost or gain
    "independent": (EPOCHS_30, {"ensemble_mode": "independent"}),
}
REFERENCE = "before"
NON_INFERIOR = {"roc_auc": -0.005, "accuracy": -0.01}

DATASETS: dict[str, dict[str, Any]] = {
    # PBC-8: 200 images per class; 20 test images per class keep the before arm affordable here.
    "pbc": {"folder": "pbc_leukocytes_8class", "subdir": "", "test_size": 20, "sizes": "2,5,10,20"},
    # BCCD: basophil dropped (2 images), smears as groups (a patient never spans the split).
    "bccd": {"folder": "bccd_wbc_fewshot", "subdir": "labelled", "test_size": 0.25, "sizes": "2,5,10,20",
             "group_pattern": r"(BloodImage_\d+)", "drop_classes": ["basophil"]},
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="pbc")
    ap.add_argument("--arms", default="before,default",
                    help=f"from {', '.join(ARMS)} ({REFERENCE} always runs)")
    ap.add_argument("--sizes", default=None, help="labelled images per class (default: the data set's)")
    ap.add_argument("--repeats", type=int, default=3)
    add_run_options(ap, "cpu_speed")
    ap.add_argument("--quick", action="store_true",
                    help="proves the script runs (size 2, 1 repeat, 3 epochs, 48 px input, 3 test images "
                         "per class); says nothing about the methods")
    return ap.parse_args()


def arm_settings(arm: str, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    options, base = json.loads(json.dumps(ARMS[arm]))
    if quick:
        options["encoder_kwargs"] = {"input_size": 48}
        options["finetune"] = {"max_epochs": 3}
    return options, base


def main() -> int:
    args = parse_args()
    proto = DATASETS[args.dataset]
    root, data = open_dataset(proto)
    from fewlabel.experiments import RunView, run_curve
    from fewlabel.experiments.grid import parse_sizes

    sizes = list(parse_sizes(args.sizes or proto["sizes"]))
    repeats = args.repeats
    test_size = test_size_of(args.test_size, proto["test_size"])
    if args.quick:
        sizes, repeats = [2], 1
        test_size = 3 if args.dataset == "pbc" else test_size
    arms = [REFERENCE, *[a.strip() for a in args.arms.split(",") if a.strip() and a.strip() != REFERENCE]]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    out = args.out or REPO / "runs" / f"cpu_speed_{args.dataset}{'_quick' if args.quick else ''}"
    data_args: dict[str, Any] = {"test_size": test_size, "seed": args.seed}
    for key in ("group_pattern", "drop_classes"):
        if proto.get(key):
            data_args[key] = proto[key]
    reductions = [test_words(test_size),
                  f"sizes {','.join(map(str, sizes))}", f"{repeats} repeats",
                  f"{args.cpus_per_cell} threads a cell"]
    print(f"cpu_speed {args.dataset}: {data} -> {out}\n" + "; ".join(reductions), flush=True)
    for i, n in enumerate(sizes):
        if args.table_only:
            break
        order = arms if i % 2 == 1 else [*arms[1:], arms[0]]  # the reference alternates last / first
        for arm in order:
            options, base = arm_settings(arm, args.quick)
            t0 = time.perf_counter()
            # a run folder only grows: the sizes so far, and any size an earlier call already ran
            grown = sorted(set(sizes[:i + 1]) | stored_sizes(out / arm))
            run_curve(data, out / arm, strategies=["imagenet"], sizes=grown, repeats=repeats,
                      finetune=base or None, strategy_options={"imagenet": options} if options else None,
                      cpus_per_cell=args.cpus_per_cell, keep_models="none", log=None, progress=False,
                      command=" ".join(sys.argv), **data_args)
            print(f"n={n} {arm}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    print_comparison(out, arms, args.dataset, reductions, RunView)
    return 0


def stored_sizes(run_dir: Path) -> set[int]:
    """The sizes a run folder was last run with (none for a new folder)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return set()
    return {int(n) for n in json.loads(path.read_text()).get("config", {}).get("sizes", [])}


def _seconds(row: dict[str, Any], key: str) -> float:
    value = row.get(key, (row.get("extra") or {}).get(key))
    return float(value) if value is not None else float("nan")


def print_comparison(out: Path, arms: list[str], dataset: str, reductions: list[str], run_view: Any) -> None:
    runs = {a: run_view(out / a) for a in arms if (out / a / "run.json").exists()}
    if REFERENCE not in runs:
        print(f"no finished {REFERENCE} cells yet")
        return
    reference = draws_of(runs[REFERENCE])
    cells: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for arm, run in runs.items():
        draws = draws_of(run)
        if any(draws[k] != reference[k] for k in set(draws) & set(reference)):
            print(f"warning: arm {arm} has other draws than {REFERENCE}; left out")
            continue
        cells[arm] = {(int(r["n_per_class"]), int(r["repeat"])): r for r in run.rows(status="ok")}
    differences, caption = paired_to_reference(runs, cells, REFERENCE)
    table = []
    for n in sorted({n for n, _ in reference if n > 0}):
        for arm, by_key in cells.items():
            keys = sorted(k for k in by_key if k[0] == n)
            if not keys:
                continue
            rows = [by_key[k] for k in keys]
            row = [str(n), arm, str(len(keys)), f"{np.median([float(r['accuracy']) for r in rows]):.3f}",
                   f"{np.median([float(r['roc_auc']) for r in rows]):.3f}"]
            verdict = []
            for metric in ("accuracy", "roc_auc"):
                d = differences.get((arm, n, metric))
                row.append(difference_cell(d, arm == REFERENCE))
                if arm != REFERENCE and d is not None and d["n"]:
                    verdict.append(d["mean_diff"] >= NON_INFERIOR[metric])
            wall = [_seconds(r, "cell_seconds") for r in rows]
            cpu = [_seconds(r, "cell_cpu_seconds") for r in rows]
            row += [f"{np.median(wall):.0f}", f"{np.nanmedian(cpu):.0f}" if np.isfinite(cpu).any() else "—"]
            shared = [k for k in keys if k in cells[REFERENCE]]
            if arm != REFERENCE and shared:
                base_wall = sum(_seconds(cells[REFERENCE][k], "cell_seconds") for k in shared)
                own_wall = sum(_seconds(by_key[k], "cell_seconds") for k in shared)
                row.append(f"{base_wall / own_wall:.1f}x")
            else:
                row.append("")
            row.append("" if arm == REFERENCE or len(verdict) < 2 else ("yes" if all(verdict) else "NO"))
            table.append(row)
    print(f"\n{dataset}: " + "; ".join(reductions))
    print_table(["n/class", "arm", "reps", "acc (median)", "AUC (median)",
                 f"Δacc vs {REFERENCE} [95% CI] (pairs)", f"ΔAUC vs {REFERENCE} [95% CI] (pairs)",
                 "wall s/cell", "CPU s/cell", "speed-up", "non-inferior"], table)
    print(caption)
    print("non-inferior: mean ΔAUC >= -0.005 and mean Δacc >= -0.01 (the means; their CIs are beside them). "
          "speed-up: the reference's summed wall seconds over the arm's, on the cells both finished.")


if __name__ == "__main__":
    sys.exit(main())
