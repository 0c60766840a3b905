"""Benchmark: fewlabel's strategies against the plain ImageNet fine-tune a user would write, on the
same draws (same test set, same labelled images, same seeds), paired.

    .venv/bin/python benchmarks/vs_plain.py --dataset pbc [--arms plain,imagenet,recipe,...] [--quick]

Each arm is one ``fewlabel curve`` run folder (``<out>/<arm>/``) with the same data, seed, test size
and sizes, so every arm gets the same plan.json draws (checked) and a stopped run resumes where it
stopped. The ``plain`` arm is the reference recipe: MobileNetV2 from the ImageNet file, all layers
trained, new linear head (torchvision's dropout 0.2 kept), images resized to 224 px (bilinear) with
ImageNet normalisation, Adam lr 1e-4, batch 16, <= 100 epochs with patience 15 on validation loss
(20 % of the draw, >= 1 per class, when n >= 5; else 50 fixed epochs), best-validation weights
restored, the 8 flips / quarter turns as augmentation, plain cross-entropy.

Prints one table per data set: n per class x arm, median accuracy and macro ROC-AUC over the
repeats, and the paired mean difference to plain with its cluster-bootstrap 95 % CI. Arms (see ARMS):
house strategies (scratch, imagenet, gan, ssl, semi as ``fewlabel curve`` runs them), recipe
variants of imagenet and the fair scratch row (MobileNetV2 from random weights, plain recipe).
Reductions (``--test-size``, ``--max-epochs``, fewer sizes / repeats) are printed with the table.
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

# The plain script's recipe, as FinetuneConfig fields (AdamW with weight decay 0 is Adam).
PLAIN_FINETUNE: dict[str, Any] = {
    "lr": 1e-4, "encoder_lr": 1e-4, "weight_decay": 0.0, "batch_size": 16, "max_epochs": 100,
    "patience": 15, "epochs_without_validation": 50, "augment": "dihedral", "balance": "none",
    "label_smoothing": 0.0, "min_steps_per_epoch": 1, "dropout": 0.2, "schedule": "constant",
    "warmup_epochs": 0.0, "layer_decay": None, "bn_mode": "train", "probe_init": False,
    "probe_only_max_per_class": 0, "tta": False, "freeze_encoder": False,
    # pinned, so a change to the house imagenet recipe never reaches the reference
    "ensemble": 1, "hold_out": True, "pseudo_per_label": 0.0,
}
# fewlabel's candidate recipe for pretrained encoders: LP-FT, warm-up + cosine, frozen BN
# statistics, the 8 flips / turns in training and at test time.
RECIPE_FINETUNE: dict[str, Any] = {
    "lr": 1e-3, "encoder_lr": 1e-4, "weight_decay": 1e-4, "batch_size": 16, "max_epochs": 60,
    "patience": 15, "epochs_without_validation": 50, "augment": "dihedral", "min_steps_per_epoch": 1,
    "schedule": "cosine", "warmup_epochs": 2.0, "bn_mode": "eval", "probe_init": True, "tta": True,
}
AT_224 = {"input_size": 224}

# arm -> (fewlabel strategy, strategy options: fields of its spec; "imagenet_norm" asks for the data's
# z-score to be swapped for ImageNet's inside the encoder)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("imagenet", {"encoder_kwargs": {**AT_224, "imagenet_norm": True}, "finetune": PLAIN_FINETUNE}),
    "scratch": ("scratch", {}),
    # the house default, whatever it is now (3 independent members x 20 epochs, TTA, every label training)
    "imagenet": ("imagenet", {}),
    # the house default with its 3 members fine-tuned one after another (own seeds) on a CPU too, not
    # snapshots of one run; pinned to the recipe it was measured with
    "imagenet_independent": ("imagenet", {"finetune": {"ensemble": 3, "tta": True, "hold_out": False,
                                                       "max_epochs": 30, "ensemble_mode": "independent"}}),
    # the same at 20 epochs a member
    "imagenet_independent20": ("imagenet", {"finetune": {"ensemble": 3, "tta": True, "hold_out": False,
                                                         "max_epochs": 20, "ensemble_mode": "independent"}}),
    # the house default before that: one model, no TTA
    "imagenet_single": ("imagenet", {}),
    "gan": ("gan", {}),
    "ssl": ("ssl", {}),
    "semi": ("semi", {}),
    "imagenet_tta": ("imagenet", {"finetune": {"tta": True}}),
    # the imagenet recipe before the vs_plain measurements: 96 px, head 1e-3 / encoder 1e-4, weak aug
    "imagenet96_before": ("imagenet", {"encoder_kwargs": {"input_size": None}, "finetune": {
        "lr": 1e-3, "encoder_lr": 1e-4, "weight_decay": 1e-4, "augment": "weak", "min_steps_per_epoch": 8}}),
    "probe224": ("imagenet", {"encoder_kwargs": AT_224, "finetune": {
        "augment": "dihedral", "probe_only_max_per_class": 10**6, "tta": True}}),
    "recipe": ("imagenet", {"encoder_kwargs": AT_224, "finetune": RECIPE_FINETUNE}),
    "recipe_bn_train": ("imagenet", {"encoder_kwargs": AT_224, "finetune": {**RECIPE_FINETUNE,
                                                                            "bn_mode": "train"}}),
    "recipe_no_probe": ("imagenet", {"encoder_kwargs": AT_224, "finetune": {**RECIPE_FINETUNE,
                                                                            "probe_init": False}}),
    # Every drawn label trains (no validation hold-out, so no early stopping), cosine decay to the
    # last epoch, at least 2 steps an epoch, the 8 flips / turns averaged at test time.
    "allfit": ("imagenet", {"finetune": {"hold_out": False, "schedule": "cosine", "warmup_epochs": 1.0,
                                         "min_steps_per_epoch": 2, "tta": True}}),
    # Three members of the imagenet recipe with their own seeds, probabilities averaged, plus TTA.
    "ensemble3_tta": ("imagenet", {"finetune": {"ensemble": 3, "tta": True}}),
    # the default with every drawn label training (no validation hold-out)
    "ensemble3_tta_all": ("imagenet", {"finetune": {"ensemble": 3, "tta": True, "hold_out": False}}),
    # Compute-matched: the plain recipe as written, three independent members averaged and the 8 flips /
    # turns at test time, so "default - this" is what fewlabel's recipe adds beyond ensembling and TTA.
    "plain_x3_tta": ("imagenet", {"encoder_kwargs": {**AT_224, "imagenet_norm": True},
                                  "finetune": {**PLAIN_FINETUNE, "ensemble": 3, "tta": True}}),
    # Self-training (imagenet+pseudo) on the rest of the labelled pool, labels ignored: the data set's
    # own unlabelled folder (BCCD's red cells) is not of the classes being learnt (NO_UNLABELLED).
    "pseudo_rest": ("imagenet+pseudo", {}),
    # the same without the teacher-probability floor (every class filled with its top picks)
    "pseudo_rest_nofloor": ("imagenet+pseudo", {"finetune": {"pseudo_min_probability": 0.0}}),
    # imagenet with every drawn label training (no validation hold-out, the same constant rate and
    # epochs) and TTA: what the hold-out costs, alone.
    "all_labels_tta": ("imagenet", {"finetune": {"hold_out": False, "tta": True}}),
    "scratch_mnv2": ("scratch", {"encoder": "mobilenet_v2", "encoder_kwargs": AT_224,
                                 "finetune": PLAIN_FINETUNE}),
}

# Every ImageNet arm but the house default is pinned to what it measured: ONE model without TTA
# unless it says so (the ensembles say so), a validation fifth held out and up to 60 epochs unless it
# says otherwise, so that a change of the house recipe never changes what an arm measured.
for _arm, (_strategy, _options) in ARMS.items():
    if _strategy.startswith("imagenet") and _arm != "imagenet":
        _recipe = _options.setdefault("finetune", {})
        if _recipe is not PLAIN_FINETUNE:
            for _key, _value in {"ensemble": 1, "tta": False, "hold_out": True, "max_epochs": 60}.items():
                _recipe.setdefault(_key, _value)

# Arms that ignore the data set's unlabelled folder (their pool is the labelled pool minus the draw).
NO_UNLABELLED = {"pseudo_rest", "pseudo_rest_nofloor"}

DATASETS: dict[str, dict[str, Any]] = {
    # PBC-8: 200 images per class; the protocol's test set is 100 per class.
    "pbc": {"folder": "pbc_leukocytes_8class", "subdir": "", "test_size": 100, "sizes": "2,5,10,20,50"},
    # BCCD: basophil dropped (2 images), smears as groups, the RBC crops as the unlabelled pool.
    "bccd": {"folder": "bccd_wbc_fewshot", "subdir": "labelled", "test_size": 0.25, "sizes": "2,5,10",
             "unlabelled": "unlabelled_rbc", "group_pattern": r"(BloodImage_\d+)",
             "drop_classes": ["basophil"]},
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="pbc")
    ap.add_argument("--arms", default="plain,imagenet,recipe",
                    help=f"from {', '.join(ARMS)}; the table compares every finished arm with plain")
    ap.add_argument("--sizes", default=None, help="labelled images per class (default: the data set's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="caps every arm's epochs (a reduction, printed with the table)")
    ap.add_argument("--image-size", type=int, default=None, help="data size (default: native)")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="gan / ssl pretraining steps")
    add_run_options(ap, "vs_plain")
    ap.add_argument("--quick", action="store_true",
                    help="proves the script runs (sizes 2, 1 repeat, 2 epochs, 32 px, 48 px input, "
                         "5 test images per class); says nothing about the methods")
    return ap.parse_args()


def arm_options(arm: str, data_mean: list[float], data_std: list[float], max_epochs: int | None,
                quick: bool) -> tuple[str, dict[str, Any]]:
    """The arm's strategy and its spec options, with the data's statistics and the caps filled in."""
    strategy, options = ARMS[arm]
    options = json.loads(json.dumps(options))
    enc = options.get("encoder_kwargs") or {}
    if enc.pop("imagenet_norm", False):
        enc.update(input_mean=data_mean, input_std=data_std)
    resized = strategy == "imagenet" or options.get("encoder") == "mobilenet_v2"
    if quick and resized and enc.get("input_size", 224) is not None:
        enc["input_size"] = 48  # the house imagenet resizes to 160 px unless told otherwise
    if enc:
        options["encoder_kwargs"] = enc
    if max_epochs is not None:
        ft = options.setdefault("finetune", {})
        ft["max_epochs"] = min(int(ft.get("max_epochs", max_epochs)), max_epochs)
        if ft.get("epochs_without_validation") is not None:
            ft["epochs_without_validation"] = min(int(ft["epochs_without_validation"]), max_epochs)
    return strategy, options


def arm_schedule(arm: str, data_mean: list[float], data_std: list[float], max_epochs: int | None,
                 quick: bool) -> str:
    """What an arm's fine-tuning does after the caps: epochs, stopping, members, TTA, input size."""
    from fewlabel import strategies
    from fewlabel.training.recipe import FinetuneConfig, recipe_over

    strategy, options = arm_options(arm, data_mean, data_std, max_epochs, quick)
    entry = strategies.get(strategy)
    # as the curve builds it: the arm's recipe keys replace the strategy's, then apply over the defaults
    ft = recipe_over(FinetuneConfig().to_dict(), {**entry.finetune, **(options.get("finetune") or {})})
    size = {**entry.encoder_kwargs, **(options.get("encoder_kwargs") or {})}.get("input_size") or "native"
    members = int(ft.get("ensemble") or 1)
    stopping = (f"<= {ft['max_epochs']} epochs, patience {ft['patience']} on a validation fifth"
                + (f" ({ft['epochs_without_validation']} fixed without one)"
                   if ft.get("epochs_without_validation") else "")
                if ft.get("hold_out", True) else f"{ft['max_epochs']} fixed epochs on every label")
    tta = "on" if ft.get("tta") else "off"
    cap = "" if max_epochs is None else f" (cap {max_epochs} epochs)"
    return f"{stopping}; {members} member{'s' if members > 1 else ''}, TTA {tta}, {size} px input{cap}"


def main() -> int:
    args = parse_args()
    proto = DATASETS[args.dataset]
    root, data = open_dataset(proto)
    from fewlabel.experiments import RunView, run_curve
    from fewlabel.pipeline import prepare_data

    sizes = args.sizes or proto["sizes"]
    repeats, max_epochs, image_size = args.repeats, args.max_epochs, args.image_size
    test_size = test_size_of(args.test_size, proto["test_size"])
    if args.quick:
        sizes, repeats, max_epochs, image_size = "2", 1, 2, 32
        test_size = 5 if args.dataset == "pbc" else test_size
    data_args: dict[str, Any] = {"test_size": test_size, "seed": args.seed, "image_size": image_size}
    for key in ("group_pattern", "drop_classes"):
        if proto.get(key):
            data_args[key] = proto[key]
    unlabelled = root / proto["unlabelled"] if proto.get("unlabelled") else None
    prepared = prepare_data(data, unlabelled=unlabelled, **data_args)
    mean, std = list(prepared.preprocess.mean or ()), list(prepared.preprocess.std or ())
    out = args.out or REPO / "runs" / f"vs_plain_{args.dataset}{'_quick' if args.quick else ''}"
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    # plain is the reference of the table; it runs only when named (arms may run in parallel processes)
    table_arms = ["plain", *[a for a in arms if a != "plain"]]
    reductions = [test_words(test_size),
                  f"sizes {sizes}", f"{repeats} repeats",
                  f"epochs capped at {max_epochs}" if max_epochs else "epochs as each recipe says",
                  f"data at {image_size or 'native'} px"]
    print(f"vs_plain {args.dataset}: {data} -> {out}\n" + "; ".join(reductions), flush=True)
    finetune: dict[str, Any] = {"device": args.device} if args.device else {}
    pretrain = {"steps": args.pretrain_steps} if args.pretrain_steps else None
    for arm in arms:
        if args.table_only:
            break
        strategy, options = arm_options(arm, mean, std, max_epochs, args.quick)
        t0 = time.perf_counter()
        print(f"\n== arm {arm}: strategy {strategy}, options {json.dumps(options)}", flush=True)
        run_curve(data, out / arm, strategies=[strategy], sizes=sizes, repeats=repeats,
                  unlabelled=None if arm in NO_UNLABELLED else unlabelled, finetune=finetune,
                  pretrain=pretrain,
                  strategy_options={strategy: options} if options else None,
                  cpus_per_cell=args.cpus_per_cell, command=" ".join(sys.argv), **data_args)
        print(f"== arm {arm}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    print_comparison(out, table_arms, args.dataset, reductions, RunView)
    print("\nper arm, as it ran (the same cap for every arm):")
    for arm in table_arms:
        print(f"  {arm}: {arm_schedule(arm, mean, std, max_epochs, args.quick)}")
    return 0


def print_comparison(out: Path, arms: list[str], dataset: str, reductions: list[str], run_view: Any) -> None:
    """Median accuracy / ROC-AUC per n x arm and the paired difference to plain (mean, 95 % CI)."""
    runs = {a: run_view(out / a) for a in arms
            if (out / a / "run.json").exists() and (out / a / "plan.json").exists()}
    if "plain" not in runs:
        print("no finished plain cells yet")
        return
    reference = draws_of(runs["plain"])
    cells: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for arm, run in runs.items():
        draws = draws_of(run)
        # Pairing is only honest on identical draws: an arm may run fewer sizes or repeats than plain,
        # but every (size, repeat) it shares with plain must hold the same labelled ids.
        if any(draws[k] != reference[k] for k in set(draws) & set(reference)):
            print(f"warning: arm {arm} has other draws than plain; left out")
            continue
        cells[arm] = {(int(r["n_per_class"]), int(r["repeat"])): r for r in run.rows(status="ok")}
    differences, caption = paired_to_reference(runs, cells, "plain")
    sizes = sorted({n for n, _ in reference if n > 0})
    table = []
    for n in sizes:
        for arm, by_key in cells.items():
            keys = sorted(k for k in by_key if k[0] == n)
            if not keys:
                continue
            acc = [float(by_key[k]["accuracy"]) for k in keys]
            auc = [float(by_key[k]["roc_auc"]) for k in keys]
            row = [str(n), arm, str(len(keys)), f"{np.median(acc):.3f}", f"{np.median(auc):.3f}"]
            for metric in ("accuracy", "roc_auc"):
                row.append(difference_cell(differences.get((arm, n, metric)), arm == "plain"))
            secs = [float(by_key[k].get("train_seconds") or 0) for k in keys]
            row.append(f"{np.median(secs):.0f}")
            table.append(row)
    print(f"\n{dataset}: " + "; ".join(reductions))
    print_table(["n/class", "arm", "reps", "acc (median)", "AUC (median)", "Δacc vs plain [95% CI] (pairs)",
                 "ΔAUC vs plain [95% CI] (pairs)", "train s"], table)
    print(caption)


if __name__ == "__main__":
    sys.exit(main())
