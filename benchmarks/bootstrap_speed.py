"""Benchmark: time of the bootstrap CIs in ``classification_metrics`` (the per-cell cost of CIs).

    .venv/bin/python benchmarks/bootstrap_speed.py

Prints seconds (best of 3) for 1000 resamples at several test-set sizes and class counts.
"""

from __future__ import annotations

import time

import numpy as np

from fewlabel.evaluate.metrics import classification_metrics

from _common import print_table


def main() -> None:
    rows = []
    for n, k in ((200, 2), (800, 8), (3000, 8), (10000, 10)):
        rng = np.random.default_rng(0)
        y = rng.integers(0, k, n)
        proba = rng.dirichlet(np.ones(k), n)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            classification_metrics(y, proba, n_boot=1000)
            best = min(best, time.perf_counter() - t0)
        rows.append([str(n), str(k), f"{best:.3f}"])
    print_table(["test images", "classes", "seconds (1000 resamples, best of 3)"], rows)


if __name__ == "__main__":
    main()
