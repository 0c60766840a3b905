"""Which images to label: the selection rules' arms against random draws of the same size, paired.

On the page only when the run has selection arms (``curve --selection``). Per strategy and size: the
metric of every arm (the class-stratified draw, an oracle that needs the labels first; the
class-agnostic random draw of the same ``n × classes`` images; each rule's picks), the classes its
labelled sets reached, the paired difference to the class-agnostic random draw (or, without one, to
the stratified draw) from the run's cluster bootstrap, and the labels each arm needs for the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fewlabel.evaluate.cluster_bootstrap import MIN_REPEATS_FOR_VERDICT, paired_summary
from fewlabel.experiments.arms import arm_name, arm_parts
from fewlabel.report.analysis import ReportData, point_at
from fewlabel.report.formatting import num
from fewlabel.report.sections.section import Section, fragment

ARM_WORDS = {None: "class-stratified random (oracle: needs the labels)", "random": "random, blind to labels",
             "typiclust": "TypiClust picks", "probcover": "ProbCover picks"}


def classes_reached(rows: list[Mapping[str, Any]], arm: str, n: int, n_classes: int) -> str:
    """Min-max over the repeats of the classes an arm's labelled sets held (stratified: all of them)."""
    ok = [r for r in rows if r["strategy"] == arm and int(r["n_per_class"]) == n and r.get("status") == "ok"]
    if not ok:
        return "—"
    if arm_parts(arm)[1] is None:
        return f"{n_classes} of {n_classes}"
    counts = [int(c) for r in ok if (c := (r.get("extra") or {}).get("classes_covered")) is not None]
    if not counts:
        return "—"
    lo, hi = min(counts), max(counts)
    return f"{lo} of {n_classes}" if lo == hi else f"{lo}–{hi} of {n_classes}"


def _difference(data: ReportData, arm: str, reference: str, n: int) -> dict[str, Any] | None:
    rb = data.bootstrap
    if rb is None or arm == reference or (arm, n) not in rb.cells or (reference, n) not in rb.cells:
        return None
    res = paired_summary(rb.plan, rb.cells[(arm, n)], rb.cells[(reference, n)])
    if not res["n"] or not math.isfinite(res["mean_diff"]):
        return None
    return {"text": f"{res['mean_diff']:+.3f} [{num(res['ci_low'])}, {num(res['ci_high'])}]", "n": res["n"],
            "few": bool(res["few_pairs"]),
            "above": bool(not res["few_pairs"] and res["ci_low"] > 0),
            "below": bool(not res["few_pairs"] and res["ci_high"] < 0)}


def fewest_labels(data: ReportData, arms: list[str]) -> str | None:
    """One sentence: which label-blind arm needs the fewest labels for the target (point estimates),
    and whether its interval clears the others' or overlaps them; None when fewer than two have one."""
    found = [(arm, t) for arm in arms if (t := data.targets.get(arm)) is not None and t.n is not None]
    if len(found) < 2:
        return None
    found.sort(key=lambda item: item[1].n)
    (best, need), others = found[0], found[1:]
    tied = [arm for arm, t in others if t.n == need.n]
    if tied:
        return (f"{', '.join([best, *tied])} need the fewest labels alike (about {need.n:.3g} per class): "
                "no difference on this run.")
    clear = need.high is not None and all(t.low is not None and need.high < t.low for _, t in others)
    return (f"Of the arms that choose without labels, {best} needs the fewest: about {need.n:.3g} per class. "
            + ("Its interval lies below every other arm's: a clear difference on this run."
               if clear else "Its interval overlaps another arm's: not a clear difference on this run."))


def build(data: ReportData) -> dict[str, Any] | None:
    rules = [str(r) for r in data.config.get("selection") or []]
    if not rules:
        return None
    n_classes = len(data.classes)
    blocks = []
    for strategy in data.config.get("strategies") or []:
        arms = [arm_name(str(strategy), rule) for rule in (None, *rules)]
        reference = arm_name(str(strategy), "random" if "random" in rules else None)
        sizes = sorted({int(r["n_per_class"]) for r in data.rows if r["strategy"] in arms})
        tables = []
        for n in sizes:
            lines = []
            for arm in arms:
                p = point_at(data.cmaps[data.metric].get(arm, []), n)
                lines.append({
                    "arm": arm, "words": ARM_WORDS.get(arm_parts(arm)[1], arm_parts(arm)[1]),
                    "value": f"{num(p.median)} ({num(p.ci_low)}–{num(p.ci_high)})" if p else "—",
                    "classes": classes_reached(data.rows, arm, n, n_classes),
                    "difference": _difference(data, arm, reference, n), "reference": arm == reference})
            tables.append({"n_per_class": n, "budget": n * n_classes, "lines": lines})
        needs = [{"arm": arm, "text": data.targets[arm].text} for arm in arms if arm in data.targets]
        blocks.append({"strategy": strategy, "reference": reference, "tables": tables, "needs": needs,
                       "fewest": fewest_labels(data, arms[1:])})
    return {"selection_blocks": blocks, "selection_rules": rules,
            "embedded_rules": [r for r in rules if r != "random"], "min_verdict": MIN_REPEATS_FOR_VERDICT,
            "n_classes": n_classes}


SECTION = Section(anchor="selection", title="Which images to label: selection rules against random draws",
                  nav="Selection", build=build, template=fragment(__file__))
