"""Benchmark: frozen features (``probe``, ``knn``) beside the fine-tuned ``imagenet`` default, on the
same draws (one ``fewlabel curve`` run per data set holding the three strategies: one plan, one test
set, the same labelled images and seeds), paired.

    .venv/bin/python benchmarks/probe.py [--dataset pbc,bccd] [--arms imagenet,probe,knn] [--quick]
    .venv/bin/python benchmarks/probe.py --encoder vit --encoder-weights FILE   # a foundation model

The probe and kNN read the encoder's features from the feature cache (``<out>/cache`` unless
$FEWLABEL_CACHE is set), computed once per image; the table says how long that took and what a cell
costs afterwards. With the default encoder (the ImageNet MobileNetV2 the ``imagenet`` strategy starts
from) this measures what fine-tuning adds over frozen ImageNet features. Accuracy with real
foundation weights (DINOv2, DinoBloom) is NOT measured here: no such file ships with fewlabel. With
one, ``--encoder vit --encoder-weights FILE`` runs the same comparison with its features.

Prints per data set × size × arm: median accuracy / ROC-AUC over the repeats, the paired mean
difference to ``imagenet`` with its cluster-bootstrap 95 % CI, median wall seconds per cell, and the
feature extraction once (images computed, seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _paired import difference_cell, paired_to_reference

from _common import REPO, dataset_or_exit, print_table, use_shared_imagenet_weights

REFERENCE = "imagenet"
ARMS = ("imagenet", "probe", "knn")
FROZEN = ("probe", "knn")
DATASETS: dict[str, dict[str, Any]] = {
    # PBC-8: 200 images per class; the protocol's test set is 100 per class.
    "pbc": {"folder": "pbc_leukocytes_8class", "subdir": "", "test_size": 100, "sizes": "1,2,5,10,20,50"},
    # BCCD: basophil dropped (2 images), smears as groups; sizes stop at 10 (15 monocytes in the pool).
    "bccd": {"folder": "bccd_wbc_fewshot", "subdir": "labelled", "test_size": 0.25, "sizes": "1,2,5,10",
             "group_pattern": r"(BloodImage_\d+)", "drop_classes": ["basophil"]},
}
QUICK = {"sizes": "2", "repeats": 1, "input_size": 32, "max_epochs": 3, "test_size": {"pbc": 3, "bccd": 0.1}}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="pbc,bccd", help=f"comma-separated, from {', '.join(DATASETS)}")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"from {', '.join(ARMS)} ({REFERENCE} is the "
                    "reference of the differences)")
    ap.add_argument("--sizes", default=None, help="labelled images per class (default: the data set's)")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--test-size", type=float, default=None,
                    help="test images per class (>= 1) or fraction (< 1); default: the data set's")
    ap.add_argument("--encoder", default=None, help="the frozen arms' encoder (default: the ImageNet "
                    "MobileNetV2 of the imagenet strategy), e.g. vit")
    ap.add_argument("--encoder-weights", type=Path, default=None, help="its weights file")
    ap.add_argument("--input-size", type=int, default=None,
                    help="the frozen arms' input size (default: the strategy's 160 px; 224 with --encoder)")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda")
    ap.add_argument("--cpus-per-cell", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default runs/probe_<dataset>[_quick]")
    ap.add_argument("--table-only", action="store_true", help="print the tables from finished cells")
    ap.add_argument("--quick", action="store_true",
                    help="proves the script runs (size 2, 1 repeat, 32 px input, imagenet 3 epochs, 3 PBC "
                         "test images per class, a tenth of BCCD); says nothing about the methods")
    return ap.parse_args()


def frozen_options(args: argparse.Namespace) -> dict[str, Any]:
    """The probe / knn spec options: another encoder, its weights, the input size."""
    options: dict[str, Any] = {}
    size = QUICK["input_size"] if args.quick else args.input_size
    if args.encoder:
        options["encoder"] = args.encoder
        size = size or 224  # foundation models are used at 224 px (a multiple of 8, 14 and 16)
    if args.encoder_weights:
        options["encoder_weights"] = str(args.encoder_weights.resolve())
    if size:
        options["encoder_kwargs"] = {"input_size": int(size)}
    return options


class StrategyView:
    """One strategy's rows of a run, as ``_paired.paired_to_reference`` reads a run of one arm."""

    def __init__(self, run: Any, strategy: str) -> None:
        self.run, self.strategy = run, strategy

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.run.rows(status) if r["strategy"] == self.strategy]

    def test_truth(self) -> Any:
        return self.run.test_truth()

    def probas(self, rows: Any, n_test: int) -> dict[tuple[str, int], dict[int, np.ndarray]]:
        return self.run.probas([r for r in rows if r["strategy"] == self.strategy], n_test)


def feature_extraction(run: Any, rows: list[dict[str, Any]]) -> tuple[int, float]:
    """Images whose features the run's probe / knn cells computed, and the seconds that took."""
    images, seconds = 0, 0.0
    for row in rows:
        if row["strategy"] not in FROZEN or not row.get("proba_path"):
            continue
        try:
            history = json.loads((run.root / row["proba_path"]).with_name("cell.json").read_text())["history"]
        except (OSError, ValueError, KeyError):
            continue
        for entry in history:
            if entry.get("features_computed"):
                images += int(entry["features_computed"])
                seconds += float(entry.get("feature_seconds") or 0.0)
    return images, seconds


def print_comparison(out: Path, name: str, arms: list[str], reductions: list[str]) -> None:
    from fewlabel.experiments import RunView

    if not (out / "run.json").exists():
        print(f"{name}: no run at {out} yet")
        return
    run = RunView(out)
    rows = run.rows(status="ok")
    views = {a: StrategyView(run, a) for a in arms if any(r["strategy"] == a for r in rows)}
    cells = {a: {(int(r["n_per_class"]), int(r["repeat"])): r for r in v.rows("ok")}
             for a, v in views.items()}
    differences: dict[tuple[str, int, str], dict[str, Any]] = {}
    caption = f"no finished {REFERENCE} cells: no paired differences"
    if REFERENCE in views:
        differences, caption = paired_to_reference(views, cells, REFERENCE)
    table = []
    for n in sorted({n for by in cells.values() for n, _ in by}):
        for arm, by_key in cells.items():
            keys = sorted(k for k in by_key if k[0] == n)
            if not keys:
                continue
            picked = [by_key[k] for k in keys]
            row = [str(n), arm, str(len(keys)), f"{np.median([float(r['accuracy']) for r in picked]):.3f}",
                   f"{np.median([float(r['roc_auc']) for r in picked]):.3f}"]
            for metric in ("accuracy", "roc_auc"):
                row.append(difference_cell(differences.get((arm, n, metric)), arm == REFERENCE))
            row.append(f"{np.median([float(r.get('cell_seconds') or 'nan') for r in picked]):.1f}")
            table.append(row)
    images, seconds = feature_extraction(run, rows)
    print(f"\n{name}: " + "; ".join(reductions))
    print_table(["n/class", "arm", "reps", "acc (median)", "AUC (median)",
                 f"Δacc vs {REFERENCE} [95% CI] (pairs)", f"ΔAUC vs {REFERENCE} [95% CI] (pairs)",
                 "wall s/cell"], table)
    print(caption)
    frozen_cells = [r for r in rows if r["strategy"] in FROZEN]
    print(f"feature extraction (once, shared by probe and knn): {images} images in {seconds:.1f} s this run"
          + ("" if images else " (every feature read from an earlier run's cache)")
          + f"; {len(frozen_cells)} frozen-feature cells, median "
          + (f"{np.median([float(r['cell_seconds']) for r in frozen_cells]):.1f} s a cell" if frozen_cells
             else "—"))


def main() -> int:
    args = parse_args()
    use_shared_imagenet_weights()
    from fewlabel.experiments import run_curve

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    names = [d.strip() for d in args.dataset.split(",") if d.strip()]
    unknown = [a for a in arms if a not in ARMS] + [d for d in names if d not in DATASETS]
    if unknown:
        print(f"unknown arm(s) or data set(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    frozen = frozen_options(args)
    own_cache = "FEWLABEL_CACHE" not in os.environ
    for name in names:
        proto = DATASETS[name]
        root = dataset_or_exit(proto["folder"])
        data = root / proto["subdir"] if proto["subdir"] else root
        sizes, repeats = args.sizes or proto["sizes"], args.repeats
        test_size: float | int = proto["test_size"]
        if args.test_size is not None:
            test_size = int(args.test_size) if args.test_size >= 1 else float(args.test_size)
        options: dict[str, dict[str, Any]] = {a: dict(frozen) for a in arms if a in FROZEN and frozen}
        if args.quick:
            sizes, repeats = QUICK["sizes"], QUICK["repeats"]
            test_size = QUICK["test_size"][name]
            if REFERENCE in arms:
                options[REFERENCE] = {"encoder_kwargs": {"input_size": QUICK["input_size"]},
                                      "finetune": {"max_epochs": QUICK["max_epochs"]}}
        out = args.out / name if args.out else REPO / "runs" / f"probe_{name}{'_quick' if args.quick else ''}"
        if own_cache:  # the features cached with the run, unless the user keeps a cache of their own
            os.environ["FEWLABEL_CACHE"] = str(out / "cache")
        data_args: dict[str, Any] = {"test_size": test_size, "seed": args.seed}
        for key in ("group_pattern", "drop_classes"):
            if proto.get(key):
                data_args[key] = proto[key]
        reductions = [f"test {test_size}{' per class' if isinstance(test_size, int) else ''}",
                      f"sizes {sizes}", f"{repeats} repeats",
                      f"frozen arms: {json.dumps(frozen) if frozen else 'the strategies as registered'}"]
        if args.quick:
            reductions.append(f"QUICK: {QUICK['input_size']} px input, imagenet {QUICK['max_epochs']} epochs")
        print(f"probe {name}: {data} -> {out}\n" + "; ".join(reductions), flush=True)
        if not args.table_only:
            t0 = time.perf_counter()
            run_curve(data, out, strategies=arms, sizes=sizes, repeats=repeats,
                      finetune={"device": args.device} if args.device else None,
                      strategy_options=options or None, cpus_per_cell=args.cpus_per_cell, keep_models="none",
                      log=None, progress=False, command=" ".join(sys.argv), **data_args)
            print(f"{name}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        print_comparison(out, name, arms, reductions)
    print("\nAccuracy with real foundation weights is not measured here (none ships with fewlabel). With a "
          "DINOv2 or DinoBloom file, measure it on the same draws with:\n"
          "  .venv/bin/python benchmarks/probe.py --dataset pbc,bccd --encoder vit --encoder-weights FILE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
