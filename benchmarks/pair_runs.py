"""Paired comparison of finished ``fewlabel curve`` run folders made on the same plan (same data,
seed and test size: the same test set and labelled draws), e.g. a probe run beside a benchmark's
fine-tuning arm.

    .venv/bin/python benchmarks/pair_runs.py REFERENCE_RUN OTHER_RUN [OTHER_RUN ...]

Each run may hold one or more strategies; every (run, strategy) is an arm named ``<folder>:<strategy>``.
Draws are checked equal on every (size, repeat) both runs hold; an arm with other draws or another
test set is left out with a warning. Prints per size × arm: repeats, median accuracy / ROC-AUC and the
paired mean difference to the reference arm (the reference run's first strategy) with the package's
cluster-bootstrap 95 % CI (test groups × repeats).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from _paired import difference_cell, draws_of, paired_to_reference

from _common import print_table


class StrategyView:
    """One strategy of a ``RunView``: what ``paired_to_reference`` reads (rows, probabilities, truth)."""

    def __init__(self, view: Any, strategy: str) -> None:
        self.view, self.strategy, self.plan = view, strategy, view.plan

    def rows(self, status: str = "ok") -> list[dict[str, Any]]:
        return [r for r in self.view.rows(status=status) if r["strategy"] == self.strategy]

    def test_truth(self) -> Any:
        return self.view.test_truth()

    def probas(self, rows: list[dict[str, Any]], n_test: int) -> Any:
        return self.view.probas(rows, n_test)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    from fewlabel.experiments import RunView

    arms: dict[str, StrategyView] = {}
    for folder in map(Path, argv):
        view = RunView(folder)
        for strategy in sorted({r["strategy"] for r in view.rows(status="ok")}):
            arms[f"{folder.name}:{strategy}"] = StrategyView(view, strategy)
    if not arms:
        print("no finished cells in these runs")
        return 1
    reference = next(iter(arms))
    ref_draws = draws_of(arms[reference])
    cells: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for name, arm in arms.items():
        draws = draws_of(arm)
        if any(draws[k] != ref_draws[k] for k in set(draws) & set(ref_draws)):
            print(f"warning: {name} was drawn on another plan than {reference}; left out")
            continue
        cells[name] = {(int(r["n_per_class"]), int(r["repeat"])): r for r in arm.rows()}
    differences, caption = paired_to_reference({k: arms[k] for k in cells}, cells, reference)
    table = []
    for n in sorted({n for by in cells.values() for n, _ in by}):
        for name, by_key in cells.items():
            keys = sorted(k for k in by_key if k[0] == n)
            if not keys:
                continue
            row = [str(n), name, str(len(keys)),
                   f"{np.median([float(by_key[k]['accuracy']) for k in keys]):.3f}",
                   f"{np.median([float(by_key[k]['roc_auc']) for k in keys]):.3f}"]
            for metric in ("accuracy", "roc_auc"):
                row.append(difference_cell(differences.get((name, n, metric)), name == reference))
            table.append(row)
    print_table(["n/class", "arm", "reps", "acc (median)", "AUC (median)", f"Δacc vs {reference} [95% CI]",
                 f"ΔAUC vs {reference} [95% CI]"], table)
    print(caption)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
