"""Benchmark: 3D fine-tuning and 3D explanations, this tree vs another checkout, back to back.

    .venv/bin/python benchmarks/speed_3d.py --other ../wt_old [--max-epochs 2] [--threads 1]

On ../shared/datasets/lgg_mri_3d (whole FLAIR volumes, 36x128x128 working size, grade labels) each
tree runs, in a fresh child process of its own (so peak RSS is that tree's alone):

1. ``cell``: ``run_curve`` with one scratch cell (10 labels per class, repeat 0, the given epochs,
   CPU), the way ``fewlabel curve --strategies scratch --sizes 10 --repeats 1`` runs it;
2. ``explain``: ``explain_run`` on that run folder (saliency, LRP, Grad-CAM on 2 test volumes per
   class, the faithfulness / randomisation / mask checks, the t-SNE of every test volume's features),
   what ``fewlabel report`` computes before it renders.

Same seeds, same data, same thread count for both trees. Prints wall time, peak RSS (the child's
``ru_maxrss``), user and system CPU seconds and the test ROC-AUC of the cell. ``--other`` is a
checkout of an older commit (e.g. ``git worktree add ../wt_old main``); without it only this tree
runs. Wall times on a shared machine move with its load; user + system CPU seconds are steadier.

Targets for a laptop (2 cores, 8 GB): peak RSS within 3 GB for a cell and for an explanation pass;
a 3D cell in a few minutes. Measured (``--size 2 --max-epochs 1``, one thread, before = 18d6d7b):
explanation pass 4761 -> 1709 MB with identical deletion AUCs, CPU about the same (~2.5 min); cell
2515 -> 1535 MB (the test set no longer goes through the network at once), same AUC. With 10
labels per class the cell peaks at 3.9 GB either way: 16 whole volumes a training batch, the recipe.
Not met: a cell at 36x128x128 with the default recipe (up to 60 epochs of 8 steps of 16 volumes,
~6.5 CPU s a step) needs the better part of an hour of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, dataset_or_exit, print_table

DATASET = "lgg_mri_3d"


def child(part: str, run_dir: str, max_epochs: int, size: int, image_size: tuple[int, ...] | None) -> None:
    """Runs inside the measured process, importing fewlabel from PYTHONPATH (the tree measured)."""
    data = str(dataset_or_exit(DATASET))
    t0 = time.perf_counter()
    result: dict = {}
    if part == "cell":
        from fewlabel.experiments.curve import run_curve

        run_curve(data, run_dir, strategies=["scratch"], sizes=[size], repeats=1, seed=0,
                  image_size=image_size, finetune={"max_epochs": max_epochs, "device": "cpu"},
                  keep_models="first", progress=False, log=None)
        try:
            from fewlabel.experiments.run_view import RunView

            rows = RunView(run_dir).rows()
        except ImportError:  # a checkout from before RunView, measured as "before"
            from fewlabel.experiments.store import load_run

            _, rows = load_run(run_dir)
        row = rows[0]
        result = {"roc_auc": row.get("roc_auc"), "status": row.get("status"), "error": row.get("error"),
                  "train_seconds": row.get("train_seconds"), "epochs": row.get("epochs")}
    else:
        from fewlabel.explain.run import explain_run

        index = explain_run(run_dir, tsne=True, checks=True)
        cells = index.get("cells") or []
        checks = cells[0].get("checks", {}) if cells else {}
        result = {"errors": index.get("errors"), "explained": len(cells),
                  "deletion": {m: round(v["deletion"], 4) for m, v in checks.items()}}
    result["seconds"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", type=Path, default=None, help="another checkout to compare (run first)")
    ap.add_argument("--max-epochs", type=int, default=2, help="fine-tuning epochs of the cell")
    ap.add_argument("--size", type=int, default=10, help="labelled volumes per class")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both children")
    ap.add_argument("--image-size", default=None, help="working size D,H,W (default: the most common shape)")
    ap.add_argument("--child", choices=("cell", "explain"), help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        size = tuple(int(v) for v in args.image_size.split(",")) if args.image_size else None
        child(args.child, args.run_dir, args.max_epochs, args.size, size)
        return 0
    dataset_or_exit(DATASET)
    trees = ([("before", args.other.resolve())] if args.other else []) + [("after", REPO)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fewlabel-speed3d-") as tmp:
        for label, tree in trees:
            run_dir = Path(tmp) / label
            for part in ("cell", "explain"):
                r = _measured(tree, part, run_dir, args)
                auc = r.get("roc_auc")
                note = (f"AUC {auc:.4f}, {r.get('epochs')} epochs, train {r.get('train_seconds'):.1f} s"
                        if part == "cell" and auc is not None else json.dumps(
                            {k: r[k] for k in ("explained", "errors", "deletion", "error") if r.get(k)}))
                rows.append([label, part, f"{r['wall']:.1f}", f"{r['maxrss_mb']:.0f}",
                             f"{r['user']:.1f}", f"{r['sys']:.1f}", note])
                print(" | ".join(rows[-1]), flush=True)
    print(f"\n{DATASET}: scratch cell, {args.size} labels/class, {args.max_epochs} epoch(s), CPU, "
          f"OMP_NUM_THREADS={args.threads}, working size {args.image_size or 'most common (36,128,128)'}")
    print_table(["tree", "part", "wall s", "peak RSS MB", "user s", "sys s", "result"], rows)
    return 0


def _measured(tree: Path, part: str, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run one part in a child and read its own resource usage (``wait4``: this child alone)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--run-dir", str(run_dir),
           "--max-epochs", str(args.max_epochs), "--size", str(args.size)]
    if args.image_size:
        cmd += ["--image-size", args.image_size]
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tree))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(out[-3000:])
        raise SystemExit(f"{part} in {tree} failed (exit {proc.returncode})")
    found = json.loads(lines[-1][len("RESULT "):])
    found.update(wall=wall, maxrss_mb=usage.ru_maxrss / 1024, user=usage.ru_utime, sys=usage.ru_stime)
    return found


if __name__ == "__main__":
    sys.exit(main())
