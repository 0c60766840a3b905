"""Paired comparison of benchmark arms (``fewlabel curve`` run folders on the same data, seed and
test set): the draws each arm ran, and each arm's difference to a reference arm by the package's
paired cluster bootstrap (test groups × repeats)."""

from __future__ import annotations

from typing import Any

import numpy as np


def draws_of(run: Any) -> dict[tuple[int, Any], list[str]]:
    """Labelled ids per (size, repeat) of a ``RunView``'s plan (a selection rule's picks under (size,
    (repeat, rule))), and the test ids under key (0, "test")."""
    plan = run.plan
    draws: dict[tuple[int, Any], list[str]] = {}
    for d in plan.draws.values():
        repeat = int(d["repeat"])
        draws[(int(d["n_per_class"]), repeat if "selection" not in d else (repeat, d["selection"]))] = list(
            d["labelled"])
    draws[(0, "test")] = list(plan.test_ids)
    return draws


def paired_to_reference(runs: dict[str, Any], cells: dict[str, dict[tuple[int, int], dict[str, Any]]],
                        reference: str) -> tuple[dict[tuple[str, int, str], dict[str, Any]], str]:
    """Per (arm, size, metric) the paired difference to ``reference`` from the package's cluster bootstrap:
    the same resamples of test groups × repeats for every arm (the arms share one test set)."""
    from fewlabel.evaluate.cluster_bootstrap import (
        MIN_REPEATS_FOR_VERDICT,
        draw_plan,
        paired_summary,
        per_repeat_metric,
    )

    truth = runs[reference].test_truth()
    if truth is None:
        return {}, f"no per-image test results in the {reference} run: no CIs"
    labels, groups, _ = truth
    probas: dict[str, dict[int, dict[int, np.ndarray]]] = {}
    for arm in cells:
        if arm != reference:
            other = runs[arm].test_truth()
            if other is None or not np.array_equal(other[0], labels) or not np.array_equal(other[1], groups):
                print(f"warning: arm {arm} was scored on another test set than {reference}; left out")
                continue
        by_size: dict[int, dict[int, np.ndarray]] = {}
        for (_, n), reps in runs[arm].probas(runs[arm].rows(status="ok"), len(labels)).items():
            by_size[n] = reps
        probas[arm] = by_size
    repeats = max((len(r) for by in probas.values() for r in by.values()), default=1)
    plan = draw_plan(groups, labels, n_repeats=repeats, n_boot=2000, seed=0)
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    for arm, by_size in probas.items():
        for n, reps in by_size.items():
            base = probas[reference].get(n)
            if arm == reference or base is None:
                continue
            for metric in ("accuracy", "roc_auc"):
                out[(arm, n, metric)] = paired_summary(plan, per_repeat_metric(plan, labels, reps, metric),
                                                       per_repeat_metric(plan, labels, base, metric))
    return out, (f"95% CI: paired cluster bootstrap over {plan.n_groups} test groups × repeats (2000 "
                 f"resamples, the same for every arm); '(n)' is the repeats both arms finished, and fewer "
                 f"than {MIN_REPEATS_FOR_VERDICT} get no verdict ('no verdict'), whatever their interval.")


def difference_cell(d: dict[str, Any] | None, reference: bool = False) -> str:
    """One table cell: ``+0.012 [-0.004, +0.030] (5)``, "no verdict" below the package's repeat count
    for one, "(reference)" on the reference arm, "—" where the two arms share no repeat."""
    if reference:
        return "(reference)"
    if d is None or not d["n"]:
        return "—"
    return (f"{d['mean_diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] ({d['n']})"
            + (" no verdict" if d["few_pairs"] else ""))
