"""What the curve benchmarks share: options, the run, the table (not part of the package)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from fewlabel.experiments import run_curve, summarise

from _common import REPO, dataset_or_exit, print_table


def parser(doc: str, name: str, *, strategies: str, sizes: str, repeats: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help=f"run folder (default runs/curve_{name}[_quick])")
    ap.add_argument("--strategies", default=strategies)
    ap.add_argument("--sizes", default=sizes)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--max-epochs", type=int, default=None, help="fine-tuning epochs (default: the house's)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--executor", default="local", choices=("local", "ray"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--cpus-per-cell", type=int, default=1)
    ap.add_argument("--gpus-per-cell", type=float, default=0.0)
    ap.add_argument("--device", default=None, help="auto | cpu | cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="pretraining steps for gan / segmentation / ssl (default: the house's)")
    ap.add_argument("--pretrain-batch", type=int, default=None, help="pretraining batch size")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny grid (2 strategies, sizes 1,2, one repeat, 2 epochs, small images): "
                         "proves the script works, says nothing about the methods")
    return ap


def run(args: argparse.Namespace, name: str, dataset: str, *, quick: dict[str, Any], subdir: str = "",
        **protocol: Any) -> int:
    """Run (or resume) the benchmark's curve and print median [IQR] ROC-AUC and accuracy per cell."""
    root = dataset_or_exit(dataset)
    weights = REPO.parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"
    if weights.exists():  # the imagenet strategy finds the shared copy without a download
        os.environ.setdefault("FEWLABEL_IMAGENET_WEIGHTS", str(weights))
    data = root / subdir if subdir else root
    for key in ("unlabelled", "masks"):
        if protocol.get(key):
            protocol[key] = root / protocol[key]
    finetune: dict[str, Any] = {}
    if args.max_epochs is not None:
        finetune["max_epochs"] = args.max_epochs
    if args.device:
        finetune["device"] = args.device
    pretrain: dict[str, Any] = {}
    if args.pretrain_steps is not None:
        pretrain["steps"] = args.pretrain_steps
    if args.pretrain_batch is not None:
        pretrain["batch_size"] = args.pretrain_batch
    grid = {"strategies": args.strategies, "sizes": args.sizes, "repeats": args.repeats}
    if args.image_size is not None:
        protocol["image_size"] = args.image_size
    if args.quick:
        grid.update({k: quick[k] for k in ("strategies", "sizes", "repeats") if k in quick})
        finetune.setdefault("max_epochs", 2)
        protocol.update({k: v for k, v in quick.items() if k not in grid})
    out = args.out or REPO / "runs" / f"curve_{name}{'_quick' if args.quick else ''}"
    print(f"{name}: {data} -> {out}")
    print(f"grid: strategies {grid['strategies']}, sizes {grid['sizes']}, repeats {grid['repeats']}; "
          f"protocol {_fmt(protocol)}; finetune {_fmt(finetune)}; pretrain {_fmt(pretrain)}", flush=True)
    t0 = time.perf_counter()
    result = run_curve(data, out, **grid, seed=args.seed, finetune=finetune, pretrain=pretrain or None,
                       executor=args.executor,
                       workers=args.workers, ray_address=args.ray_address, cpus_per_cell=args.cpus_per_cell,
                       gpus_per_cell=args.gpus_per_cell, command=" ".join(sys.argv), **protocol)
    wall = time.perf_counter() - t0
    print_results(result.rows)
    print(f"\nwall time {wall / 60:.1f} min for {result.ran} cells run now ({result.resumed} resumed); "
          f"{result.counts['ok']} ok, {result.counts['failed']} failed, {result.counts['skipped']} skipped")
    print(f"results: {result.results_csv}")
    return 0 if result.ok else 1


def print_results(rows: list[dict[str, Any]]) -> None:
    """One line per strategy × size: median [IQR] of ROC-AUC and accuracy, repeats, train seconds."""
    auc = {(s["strategy"], s["n_per_class"]): s for s in summarise(rows, "roc_auc")}
    acc = {(s["strategy"], s["n_per_class"]): s for s in summarise(rows, "accuracy")}
    secs = {(s["strategy"], s["n_per_class"]): s for s in summarise(rows, "train_seconds")}
    table = []
    for key in sorted(auc, key=lambda k: (k[0], k[1])):
        table.append([key[0], str(key[1]), str(auc[key]["n_repeats"]), _med_iqr(auc[key]), _med_iqr(acc[key]),
                      f"{secs[key]['median']:.0f}"])
    print()
    print_table(["strategy", "n/class", "reps", "ROC-AUC median [IQR]", "accuracy median [IQR]",
                 "train s (median)"], table)


def _med_iqr(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f} [{s['q1']:.3f}–{s['q3']:.3f}]"


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "defaults"
