"""Benchmark: a learning-curve sweep's fine-tuning one cell at a time vs stacked (many models in one
vmapped module), in the same process, on PBC 8-class leukocytes.

    .venv/bin/python benchmarks/sweep_speed.py [--quick] [--device auto|cpu|cuda] [--repeats 8]

Both ways run the very same cells (strategy × size × repeat: same draws, same seeds, same prepared
encoders); only the fine-tuning and test prediction are timed (pretraining runs once, before, and is
cached in runs/). Prints per strategy: cells, wall time each way, model-steps per second each way,
the ratio, and how far the test ROC-AUCs of the two ways differ. The device is the one fewlabel picks
(CUDA when present); the stacked path is forced on so it is measured on a CPU too, where it trains
fp32 and independent members (what it implements there). On a shared CPU the CPU-time ratio (process
CPU seconds, all threads) is the steadier figure; wall time is the claim.

Fairness: one cell of each strategy runs first, untimed (decoding, caches, allocator warm-up), and
the two ways alternate which goes first from one size to the next.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from _common import REPO, dataset_or_exit, print_table, use_shared_imagenet_weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="scratch,imagenet,ssl")
    ap.add_argument("--sizes", default="2,5,10,20,50")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--max-epochs", type=int, default=None, help="fine-tuning epochs (default: the house's)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--test-size", type=int, default=100, help="test images per class")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (ssl, gan, ...)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-stack", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="scratch + imagenet, size 2, 2 repeats, 3 epochs, 32 px, 10 test images per "
                         "class: proves the script runs, says little about a full sweep")
    args = ap.parse_args()
    if args.quick:
        args.strategies, args.sizes, args.repeats = "scratch,imagenet", "2", 2
        args.max_epochs = args.max_epochs or 3
        args.image_size = args.image_size or 32
        args.test_size = 10
    root = dataset_or_exit("pbc_leukocytes_8class")
    use_shared_imagenet_weights()

    from fewlabel.experiments.cell import CellTask, PipelineBackend, fingerprint_of, prime_data, run_cell
    from fewlabel.experiments.grid import Cell, draw_seed, train_seed
    from fewlabel.experiments.stacking import StackTask, plan_stacks, run_stack
    from fewlabel.training.loop import select_device

    device = select_device(args.device)
    backend = PipelineBackend()
    data_args = {"data": str(root), "test_size": args.test_size, "seed": args.seed,
                 "image_size": args.image_size}
    t_data = time.perf_counter()
    data = backend.prepare_data(**data_args)
    prime_data(data_args, data)
    fingerprint = fingerprint_of(data)
    finetune = {"device": args.device, "ensemble_mode": "independent"}
    if device.type == "cpu":
        finetune["precision"] = "fp32"  # the stacked path autocasts on CUDA only
    if args.max_epochs:
        finetune["max_epochs"] = args.max_epochs
    finetune = backend.finetune_config(finetune)
    sizes = [int(s) for s in args.sizes.split(",")]
    strategies = args.strategies.split(",")
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}, data ready in {time.perf_counter() - t_data:.1f} s")

    cache = REPO / "runs" / "sweep_speed_pretrained"
    tasks_by_strategy: dict[str, list[CellTask]] = {}
    # The plan's draws (labelled ids and their train / validation split), as the curve records them.
    draws = {(n, r): backend.draw(data, n, r, draw_seed(args.seed, r), "images") for n in sizes
             for r in range(args.repeats)}
    for name in strategies:
        spec = backend.strategy_spec(name)
        if args.pretrain_steps is not None:
            spec["pretrain"] = {**(spec.get("pretrain") or {}), "steps": args.pretrain_steps}
        if args.quick and "input_size" in (spec.get("encoder_kwargs") or {}):
            spec["encoder_kwargs"] = {**spec["encoder_kwargs"], "input_size": 48}
        t0 = time.perf_counter()
        spec = backend.prepare_strategy(spec, data, cache, args.seed)
        print(f"{name}: encoder ready in {time.perf_counter() - t0:.1f} s")
        tasks_by_strategy[name] = [
            CellTask(cell=Cell(name, n, r), seed=train_seed(args.seed, r, n),
                     draw_seed=draw_seed(args.seed, r), labelled_ids=tuple(draws[(n, r)]["labelled"]),
                     train_ids=tuple(draws[(n, r)]["train"]), val_ids=tuple(draws[(n, r)]["val"]), spec=spec,
                     finetune=finetune, data_args=data_args, fingerprint=str(fingerprint),
                     config_hash="sweep-speed", keep_model=False, backend=backend)
            for n in sizes for r in range(args.repeats)]

    rows, totals = [], np.zeros(4)
    for name, tasks in tasks_by_strategy.items():
        run_cell(tasks[0])  # warm-up, untimed
        single, stacked = [], []
        wall_single = cpu_single = wall_stacked = cpu_stacked = 0.0
        for i, n in enumerate(sizes):
            group = [t for t in tasks if t.cell.n_per_class == n]
            for way in (("single", "stacked") if i % 2 == 0 else ("stacked", "single")):
                t0, c0 = time.perf_counter(), time.process_time()
                if way == "single":
                    single.extend(run_cell(t) for t in group)
                else:
                    for item in plan_stacks(group, "on", args.max_stack):
                        stacked.extend(run_stack(item) if isinstance(item, StackTask) else [run_cell(item)])
                _sync(device)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if way == "single":
                    wall_single, cpu_single = wall_single + wall, cpu_single + cpu
                else:
                    wall_stacked, cpu_stacked = wall_stacked + wall, cpu_stacked + cpu
        print(f"{name}: one at a time {wall_single:.1f} s wall, {cpu_single:.1f} s CPU; "
              f"stacked {wall_stacked:.1f} s wall, {cpu_stacked:.1f} s CPU", flush=True)
        single.sort(key=lambda o: (o.row["n_per_class"], o.row["repeat"]))
        stacked.sort(key=lambda o: (o.row["n_per_class"], o.row["repeat"]))
        failed = [o.row.get("error") for o in single + stacked if o.row["status"] != "ok"]
        if failed:
            print(f"{name}: {len(failed)} cells failed, e.g. {failed[0]}")
        steps_single = sum(_model_steps(o) for o in single)
        steps_stacked = sum(_model_steps(o) for o in stacked)
        auc_a = np.array([o.row.get("roc_auc", np.nan) for o in single], dtype=float)
        auc_b = np.array([o.row.get("roc_auc", np.nan) for o in stacked], dtype=float)
        diff = np.abs(auc_a - auc_b)
        stack_sizes = sorted({(o.row.get("extra") or {}).get("stacked_with", 1) for o in stacked})
        rows.append([name, str(len(tasks)), f"{wall_single:.1f}", f"{wall_stacked:.1f}",
                     f"{cpu_single / cpu_stacked:.2f}x",
                     f"{steps_single / wall_single:.1f}", f"{steps_stacked / wall_stacked:.1f}",
                     f"{wall_single / wall_stacked:.2f}x",
                     f"{np.nanmean(auc_a):.3f} / {np.nanmean(auc_b):.3f}",
                     f"{np.nanmax(diff):.2e}", ",".join(map(str, stack_sizes))])
        totals += [wall_single, wall_stacked, steps_single, steps_stacked]
    rows.append(["all", str(sum(len(t) for t in tasks_by_strategy.values())), f"{totals[0]:.1f}",
                 f"{totals[1]:.1f}", "", f"{totals[2] / totals[0]:.1f}", f"{totals[3] / totals[1]:.1f}",
                 f"{totals[0] / totals[1]:.2f}x", "", "", ""])
    print()
    print_table(["strategy", "cells", "one-at-a-time s", "stacked s", "CPU-time ratio",
                 "model-steps/s single", "model-steps/s stacked", "ratio", "mean AUC single / stacked",
                 "max |ΔAUC|", "stack sizes"],
                rows)
    return 0


def _model_steps(output) -> int:
    info = json.loads(output.files["cell.json"]) if "cell.json" in output.files else {}
    history = info.get("history") or []
    return int(history[-1]["step"]) if history else 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
