"""Benchmark: which images to label. Selection rules against random draws of the same size, with the
default training recipe, on one run's paired draws.

    .venv/bin/python benchmarks/selection.py --dataset pbc [--sizes 1,2,5,10] [--repeats 5] [--quick]

One ``fewlabel curve`` run folder (``--out``, resumable and growable like any curve) with the house
default strategy (``imagenet``) and ``--selection random,typiclust,probcover``: at each size ``n`` the
budget is ``n × classes`` labelled images in total, and every arm trains with the same recipe and seed
and is scored on the same test set:

  stratified  today's draw: ``n`` random images of every class (an oracle: it needs the labels first)
  random      ``n × classes`` images drawn uniformly from the pool, blind to labels
  typiclust   the rule's picks from the pool's ImageNet embedding, blind to labels (likewise probcover)

Repeats vary the draw and the selector's seed (k-means start, δ's pair sample). Prints per size × arm:
median accuracy / ROC-AUC, the classes the labelled set reached (min-max over repeats) and the paired
mean difference of each rule to class-agnostic random and to the stratified oracle with the package's
cluster-bootstrap 95 % CI (test groups × repeats; no verdict below 5 repeats).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from _paired import difference_cell, paired_to_reference

from _common import REPO, add_run_options, open_dataset, print_table, test_size_of, test_words

STRATEGY = "imagenet"
RULES = ("random", "typiclust", "probcover")

DATASETS: dict[str, dict[str, Any]] = {
    # PBC-8: 200 images per class; 20 test images per class keep 80 cells affordable on a CPU.
    "pbc": {"folder": "pbc_leukocytes_8class", "subdir": "", "test_size": 20},
    # BCCD: basophil dropped (2 images), smears as groups (a patient never spans the split).
    "bccd": {"folder": "bccd_wbc_fewshot", "subdir": "labelled", "test_size": 0.25,
             "group_pattern": r"(BloodImage_\d+)", "drop_classes": ["basophil"]},
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="pbc")
    ap.add_argument("--rules", default=",".join(RULES), help="selection rules beside the stratified draw")
    ap.add_argument("--sizes", default="1,2,5,10", help="labels per class: a budget of n x classes images")
    ap.add_argument("--repeats", type=int, default=5)
    add_run_options(ap, "selection")
    ap.add_argument("--quick", action="store_true",
                    help="proves the script runs (size 1, 1 repeat, 3 epochs, 48 px input, 3 test images "
                         "per class, PBC-8 cut to 2 classes); says nothing about the rules")
    return ap.parse_args()


class ArmView:
    """One arm of a run, as ``_paired.paired_to_reference`` reads a run: its rows and probabilities."""

    def __init__(self, view: Any, arm: str) -> None:
        self.view, self.arm = view, arm

    def test_truth(self) -> Any:
        return self.view.test_truth()

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.view.rows(status=status) if r["strategy"] == self.arm]

    def probas(self, rows: Iterable[Mapping[str, Any]], n_test: int) -> Any:
        return self.view.probas(rows, n_test)


def label(arm: str) -> str:
    return arm.partition("@")[2] or "stratified"


def main() -> int:
    args = parse_args()
    proto = DATASETS[args.dataset]
    root, data = open_dataset(proto)
    from fewlabel.experiments import RunView, run_curve

    sizes, repeats = args.sizes, args.repeats
    test_size = test_size_of(args.test_size, proto["test_size"])
    options: dict[str, Any] = {}
    finetune: dict[str, Any] = {}
    quick_drop: list[str] = []
    if args.quick:
        sizes, repeats = "1", 1
        test_size = 3 if args.dataset == "pbc" else test_size
        options = {STRATEGY: {"encoder_kwargs": {"input_size": 48}}}
        finetune = {"max_epochs": 3}
        if args.dataset == "pbc":  # two classes: the pool's embedding (the slow part) stays small
            quick_drop = ["basophil", "eosinophil", "erythroblast", "ig", "monocyte", "platelet"]
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    out = args.out or REPO / "runs" / f"selection_{args.dataset}{'_quick' if args.quick else ''}"
    data_args: dict[str, Any] = {"test_size": test_size, "seed": args.seed}
    for key in ("group_pattern", "drop_classes"):
        if proto.get(key):
            data_args[key] = proto[key]
    if quick_drop:
        data_args["drop_classes"] = sorted({*data_args.get("drop_classes", []), *quick_drop})
    recipe = ("quick: 48 px input, 3 epochs" + (", PBC-8 cut to 2 classes" if quick_drop else "")
              if args.quick else "the default recipe as it is")
    reductions = [test_words(test_size), f"sizes {sizes}",
                  f"{repeats} repeats", f"seed {args.seed}", recipe]
    print(f"selection {args.dataset}: {data} -> {out}\n" + "; ".join(reductions), flush=True)
    if not args.table_only:
        run_curve(data, out, strategies=[STRATEGY], sizes=sizes, repeats=repeats, selection=rules,
                  finetune=finetune, strategy_options=options or None, cpus_per_cell=args.cpus_per_cell,
                  command=" ".join(sys.argv), **data_args)
    print_comparison(RunView(out), rules, args.dataset, reductions)
    return 0


def print_comparison(view: Any, rules: list[str], dataset: str, reductions: list[str]) -> None:
    plan = view.plan
    from fewlabel.report.sections.selection import classes_reached

    rows = view.rows(status="ok")
    truth = view.test_truth()
    if not rows or truth is None:
        print("no finished cells yet")
        return
    arms = [STRATEGY, *(f"{STRATEGY}@{r}" for r in rules)]
    runs = {a: ArmView(view, a) for a in arms}
    cells = {a: {(int(r["n_per_class"]), int(r["repeat"])): r for r in runs[a].rows("ok")} for a in arms}
    vs_random, _ = paired_to_reference(runs, cells, f"{STRATEGY}@random") if "random" in rules else ({}, "")
    vs_oracle, caption = paired_to_reference(runs, cells, STRATEGY)
    table = []
    for n in sorted({n for by in cells.values() for n, _ in by}):
        for arm in arms:
            keys = sorted(k for k in cells[arm] if k[0] == n)
            if not keys:
                continue
            acc = [float(cells[arm][k]["accuracy"]) for k in keys]
            auc = [float(cells[arm][k]["roc_auc"]) for k in keys]
            row = [str(n), label(arm), str(len(keys)), f"{np.median(acc):.3f}", f"{np.median(auc):.3f}",
                   classes_reached(rows, arm, n, len(plan.classes))]
            for differences, reference in ((vs_random, f"{STRATEGY}@random"), (vs_oracle, STRATEGY)):
                for metric in ("accuracy", "roc_auc"):
                    row.append(difference_cell(differences.get((arm, n, metric)), arm == reference)
                               if differences or arm == reference else "—")
            table.append(row)
    print(f"\n{dataset}: " + "; ".join(reductions))
    print_table(["n/class", "labelled by", "reps", "acc (median)", "AUC (median)", "classes reached",
                 "Δacc vs random", "ΔAUC vs random", "Δacc vs stratified", "ΔAUC vs stratified"], table)
    print(caption)
    embedding = next((d["chosen"]["embedding"] for d in plan.draws.values()
                      if d.get("selection") not in (None, "random") and "embedding" in (d.get("chosen") or {})
                      ), None)
    if embedding:
        print(f"selection embedding (first rule's draw): {embedding}")


if __name__ == "__main__":
    sys.exit(main())
