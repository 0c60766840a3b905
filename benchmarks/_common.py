"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def use_shared_imagenet_weights() -> None:
    """Point fewlabel at ../shared/weights (offline copy of torchvision's file) unless the user did."""
    import os

    path = REPO.parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"
    if path.is_file():
        os.environ.setdefault("FEWLABEL_IMAGENET_WEIGHTS", str(path))


def dataset_or_exit(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_dir():
        print(f"skipped: {path} is not present (the benchmark needs ../shared/datasets/{name})")
        sys.exit(0)
    return path


def med_iqr(values: list[float]) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if v.size == 0:
        return "—"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.3f} [{q1:.3f}–{q3:.3f}]"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def add_run_options(ap: argparse.ArgumentParser, name: str) -> None:
    """The options of every benchmark made of curve run folders: test set, seed, threads, folder."""
    ap.add_argument("--test-size", type=float, default=None,
                    help="test images per class (>= 1) or fraction (< 1); default: the data set's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus-per-cell", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help=f"default runs/{name}_<dataset>[_quick]")
    ap.add_argument("--table-only", action="store_true", help="print the table from finished cells")


def open_dataset(proto: dict[str, Any]) -> tuple[Path, Path]:
    """(the data set's folder, its labelled images) in ../shared (the benchmark exits when absent),
    with ../shared's ImageNet weights in use."""
    root = dataset_or_exit(proto["folder"])
    use_shared_imagenet_weights()
    return root, (root / proto["subdir"] if proto["subdir"] else root)


def test_size_of(given: float | None, default: float | int) -> float | int:
    """``--test-size`` as the curve reads it: >= 1 images per class, < 1 a fraction."""
    if given is None:
        return default
    return int(given) if given >= 1 else float(given)


def test_words(test_size: float | int) -> str:
    return f"test {test_size}{' per class' if isinstance(test_size, int) else ''}"
