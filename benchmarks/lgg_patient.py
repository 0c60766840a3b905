"""Benchmark: LGG grade at PATIENT level, whole slice vs the tumour region the U-Net finds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lgg_patient.py [--out DIR] [--quick] [--3d]

One ``fewlabel curve`` run folder (resumable: run the same command again) with three arms on the
same plan.json draws (same test patients, same labelled patients, same seeds):
  scratch              the whole slice, random initial weights;
  segmentation         the whole slice, encoder of a U-Net pretrained on the pool's training masks;
  segmentation+region  the same U-Net crops every slice (train, validation, test; from the image
                       alone) to the region it segments; that encoder classifies the crop.
Protocol (../shared/anchors.md, section 6): split by patient, test = 40 % of each class's patients;
sizes count PATIENTS per class (all their slices, up to 4). Reductions (image size, epochs,
pretraining steps, sizes, repeats) are printed with the table.

Prints, per arm × size: slice-level and patient-level ROC-AUC (patient = mean of its slices'
probabilities) as the mean over repeats with a two-way 95 % CI (test patients × repeats:
``fewlabel.report.patients``, what the HTML report shows), patient accuracy, and the paired
patient-level difference of each arm to scratch. Per-cell values with their own CIs are in
<out>/results.csv (patient_* columns).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, dataset_or_exit, print_table

GROUP = r"(TCGA_[A-Z0-9]+_[A-Z0-9]+)"
ARMS = ("scratch", "segmentation", "segmentation+region")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="run folder (default runs/lgg_patient[_3d])")
    ap.add_argument("--sizes", default="5,10,20", help="patients per class")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=None, help="default 64 (2D), 32 (3D)")
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--cpus-per-cell", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--3d", dest="three_d", action="store_true", help="lgg_mri_3d volumes (one per patient)")
    ap.add_argument("--table-only", action="store_true", help="print the table from finished cells")
    ap.add_argument("--quick", action="store_true",
                    help="proves the script runs (size 5, 1 repeat, 2 epochs, 20 pretraining steps, "
                         "32 px); says nothing about the methods")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    root = dataset_or_exit("lgg_mri_3d" if args.three_d else "lgg_mri_2d")
    if args.quick:
        args.sizes, args.repeats, args.max_epochs, args.pretrain_steps = "5", 1, 2, 20
        args.image_size = args.image_size or (16 if args.three_d else 32)
    image_size = args.image_size or (32 if args.three_d else 64)
    name = "lgg_patient" + ("_3d" if args.three_d else "") + ("_quick" if args.quick else "")
    out = args.out or REPO / "runs" / name
    from fewlabel.experiments import run_curve
    from fewlabel.experiments.run_view import RunView

    t0 = time.perf_counter()
    if not args.table_only:
        run_curve(root / "images", out, list(ARMS), args.sizes, args.repeats, masks=root / "masks",
                  group_pattern=GROUP, test_size=0.4, count="groups", seed=args.seed,
                  image_size=(image_size,) * (3 if args.three_d else 2),
                  finetune={"max_epochs": args.max_epochs, "device": "cpu"},
                  pretrain={"steps": args.pretrain_steps, "device": "cpu"},
                  cpus_per_cell=args.cpus_per_cell, prep_cpus=args.cpus_per_cell)
    view = RunView(out)
    dims = "3D" if args.three_d else "2D"
    print(f"\nLGG {dims} grade, {out}: {image_size} px, <= {args.max_epochs} epochs, "
          f"{args.pretrain_steps} segmentation steps, sizes {args.sizes} patients/class, "
          f"{args.repeats} repeats, seed {args.seed}; wall {time.perf_counter() - t0:.0f} s")
    print_tables(view, args.n_boot, args.seed)
    return 0


def print_tables(view: Any, n_boot: int, seed: int) -> None:
    from fewlabel.evaluate.cluster_bootstrap import draw_plan, paired_summary, per_repeat_metric
    from fewlabel.evaluate.metrics import pool_by_group
    from fewlabel.report.patients import mean_over_repeats

    rows = view.rows()
    y, groups = np.asarray(view.plan.test_labels), np.asarray(view.plan.test_groups)
    probas = view.probas(rows, len(y))
    if not probas:
        print("no finished cells yet")
        return
    repeats = max(len(v) for v in probas.values())
    y_pat, _, pats = pool_by_group(y, np.eye(int(y.max()) + 1)[y], groups)
    pat_ids = np.asarray(pats)
    pat_plan = draw_plan(pat_ids, y_pat, repeats, n_boot, seed)
    n_slices, n_pat = len(y), len(pats)

    def pooled(reps: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {r: pool_by_group(y, p, groups)[1] for r, p in reps.items()}

    def mean_ci(yy: np.ndarray, gg: np.ndarray, reps: dict[int, np.ndarray], metric: str) -> str:
        m = mean_over_repeats(yy, gg, reps, metric, n_boot, seed)
        return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    table, diffs = [], []
    sizes = sorted({n for _, n in probas})
    for n in sizes:
        ref = None
        for arm in [a for a in ARMS if (a, n) in probas]:
            reps = probas[(arm, n)]
            s_auc = mean_ci(y, groups, reps, "roc_auc")
            p_auc = mean_ci(y_pat, pat_ids, pooled(reps), "roc_auc")
            p_acc = mean_ci(y_pat, pat_ids, pooled(reps), "accuracy")
            pm = per_repeat_metric(pat_plan, y_pat, pooled(reps), "roc_auc")
            table.append([arm, str(n), str(len(reps)), s_auc, p_auc, p_acc])
            if arm == "scratch":
                ref = pm
            elif ref is not None:
                d = paired_summary(pat_plan, pm, ref)
                diffs.append([f"{arm} - scratch", str(n), str(d["n"]),
                              f"{d['mean_diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                              f"{d['p_value']:.3f}"])
    print(f"\nmean over repeats [95% CI: bootstrap over test patients x repeats]; test: {n_slices} images, "
          f"{n_pat} patients; patient = mean of its images' probabilities")
    print_table(["arm", "n/class", "reps", "image ROC-AUC", "patient ROC-AUC", "patient accuracy"], table)
    if diffs:
        print("\npaired patient-level ROC-AUC difference (same draws, same resamples)")
        print_table(["comparison", "n/class", "reps", "mean diff [95% CI]", "p"], diffs)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        print(f"\n{len(failed)} failed cell(s), e.g. {failed[0]['strategy']}: {failed[0]['error']}")


if __name__ == "__main__":
    sys.exit(main())
