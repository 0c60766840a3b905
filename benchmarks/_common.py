"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import sys
from pathlib import Path

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
