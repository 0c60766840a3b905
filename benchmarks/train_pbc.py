"""Benchmark: PBC 8-class, fixed test set of 100 images per class, N labels per class, 3 seeds.

    .venv/bin/python benchmarks/train_pbc.py [--sizes 5,10,20,50] [--seeds 0,1,2] [--quick]

Strategies: scratch with the shared convnet, scratch with the Schouten et al. CNN, imagenet
(MobileNetV2). Schouten's six valid-conv stages need >= 190 px; PBC crops are 96 px, so
``schouten5`` drops the last stage (filters 4-8-8-8-16, dense 32) rather than upsampling the cells 2x.
Prints accuracy and macro ROC-AUC as median [IQR] over seeds, and training images/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from fewlabel.data import splits
from fewlabel.pipeline import default_spec, fit_cell, prepare_data
from fewlabel.training.finetune import FinetuneConfig

from _common import dataset_or_exit, med_iqr, print_table, use_shared_imagenet_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5,10,20,50")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default="scratch:convnet,scratch:schouten5,imagenet:mobilenet_v2")
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true",
                    help="proves the script runs: size 2, one seed, 3 epochs, 5 test images per class")
    args = ap.parse_args()
    test_size = 100  # the protocol's test set: 100 images per class
    if args.quick:
        args.sizes, args.seeds, args.max_epochs, test_size = "2", "0", 3, 5
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    data_dir = dataset_or_exit("pbc_leukocytes_8class")
    use_shared_imagenet_weights()
    t0 = time.perf_counter()
    data = prepare_data(data_dir, test_size=test_size, seed=0)
    print(f"data: {len(data.pool_ids)} pool / {len(data.test_ids)} test images, "
          f"{data.num_classes} classes, size {data.image_size}, device "
          f"{'cuda' if torch.cuda.is_available() and args.device != 'cpu' else 'cpu'} "
          f"(loaded in {time.perf_counter() - t0:.1f}s)")
    rows = []
    for strat in args.strategies.split(","):
        name, encoder = strat.split(":")
        for n in sizes:
            accs, aucs, speeds, secs = [], [], [], []
            for seed in seeds:
                labelled = splits.draw_labelled(data.catalog, data.pool_ids, n, seed=seed)
                cfg = FinetuneConfig(max_epochs=args.max_epochs, device=args.device, progress=False)
                spec = default_spec(name, encoder)
                if encoder == "schouten5":
                    spec.encoder, spec.encoder_kwargs = "schouten", {"filters": (4, 8, 8, 8, 16)}
                cell = fit_cell(data, labelled, spec, seed=seed, finetune_config=cfg)
                accs.append(cell.metrics["accuracy"]["value"])
                aucs.append(cell.metrics["roc_auc"]["value"])
                speeds.append(cell.fit.samples_per_second)
                secs.append(cell.train_seconds)
                print(f"  {name}/{encoder} n={n} seed={seed}: acc {accs[-1]:.3f} auc {aucs[-1]:.3f} "
                      f"{speeds[-1]:.0f} img/s {secs[-1]:.0f}s epochs {cell.fit.epochs}", flush=True)
            rows.append([f"{name} ({encoder})", str(n), med_iqr(accs), med_iqr(aucs),
                         f"{sum(speeds) / len(speeds):.0f}", f"{sum(secs):.0f}"])
    print()
    print_table(["strategy", "n/class", "accuracy med [IQR]", "ROC-AUC med [IQR]", "train img/s", "train s"],
                rows)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
