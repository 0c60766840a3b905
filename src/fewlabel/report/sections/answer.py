"""The answer in brief: the plain-language summary at the top of the page."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fewlabel.evaluate.cluster_bootstrap import MIN_REPEATS_FOR_VERDICT
from fewlabel.experiments.arms import arm_parts
from fewlabel.report.analysis import ReportData, point_at
from fewlabel.report.curves import METRIC_LABELS, CurvePoint
from fewlabel.report.formatting import num, pvalue
from fewlabel.report.paired import MIN_PAIRS_FOR_WILCOXON
from fewlabel.report.sections.section import Section, fragment
from fewlabel.strategies import PREPARED

# Below this many repeats a bootstrap CI of the median is little more than the range of the values;
# the summary then quotes the range and the test-set CI of one model instead.
MIN_REPEATS_FOR_MEDIAN_CI = 5


def _test_cis(rows: list[dict], metric: str) -> dict[tuple[str, int], tuple[float, float]]:
    """(strategy, size) → the test-set bootstrap CI of the lowest successful repeat."""
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for r in sorted(rows, key=lambda r: int(r["repeat"]), reverse=True):
        lo, hi = r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high")
        if r.get("status") == "ok" and lo is not None and hi is not None:
            out[(str(r["strategy"]), int(r["n_per_class"]))] = (float(lo), float(hi))
    return out


def _pretrain_note(config: Mapping[str, Any], strategies: list[str]) -> str | None:
    # every strategy with a preparation step (gan, ssl, segmentation, segmentation+region, imagenet+ssl)
    pretrained = [s for s in strategies if arm_parts(s)[0] in PREPARED]  # arms share the preparation
    if not pretrained or config.get("pretrain_per_repeat"):
        return None
    return (f"The {', '.join(pretrained)} rows rest on ONE pretraining run each: repeats vary the labelled "
            "images and the fine-tuning seed only, so their spread and intervals are conditional on that "
            "pretraining run (pretraining per repeat would include its variance).")


def _summary_sentences(cmap: dict[str, list[CurvePoint]], targets: dict[str, Any], paired: list[dict],
                       metric: str, target: float, n_test: int | None, synthetic: bool,
                       test_cis: dict[tuple[str, int], tuple[float, float]] | None = None,
                       baseline: str = "scratch", pretrain_note: str | None = None) -> list[str]:
    """The plain-language answer at the top of the page, as sentences (escaped by the template)."""
    label = METRIC_LABELS.get(metric, metric)
    sizes = sorted({p.n_per_class for pts in cmap.values() for p in pts})
    if not sizes:
        return ["No grid cell has finished successfully yet, so there is nothing to summarise."]
    n = sizes[-1]
    at_n = {s: point_at(pts, n) for s, pts in cmap.items() if point_at(pts, n) is not None}
    others = {s: p for s, p in at_n.items() if s != "scratch"}
    pool = others or at_n
    best = max(pool, key=lambda s: pool[s].median)

    def phrase(s: str, p: CurvePoint) -> str:
        reps = f"{p.n_repeats} repeat{'s' if p.n_repeats != 1 else ''}"
        if p.mean is not None:  # CI from the bootstrap over test groups × repeats
            return (f"a median {label} of {p.median:.2f} over {reps} (mean {p.mean:.2f}, 95% CI "
                    f"{p.ci_low:.2f}–{p.ci_high:.2f} over test groups and repeats)")
        if p.n_repeats >= MIN_REPEATS_FOR_MEDIAN_CI:
            return (f"a median {label} of {p.median:.2f} over {reps} (95% CI of the median "
                    f"{p.ci_low:.2f}–{p.ci_high:.2f})")
        text = (f"a median {label} of {p.median:.2f} over {reps} "
                f"(range {min(p.values):.2f}–{max(p.values):.2f}")
        ci = (test_cis or {}).get((s, p.n_per_class))
        if ci is not None:
            text += f"; 95% CI on the test set {ci[0]:.2f}–{ci[1]:.2f}"
        return text + ")"

    out = [f"With {n} labelled images per class, {best} reaches {phrase(best, at_n[best])}"
           + (f"; training from scratch reaches {phrase('scratch', at_n['scratch'])}." if "scratch" in at_n
              and best != "scratch" else ".")]
    behind = [s for s, pts in cmap.items() if pts and s not in at_n]
    for s in behind:  # a strategy whose largest size failed or is still running is not silently dropped
        last = cmap[s][-1]
        out.append(f"{s} has no finished result at {n} per class; at {last.n_per_class} it reaches "
                   f"{last.median:.2f}.")
    need = [f"{s} {targets[s].text}" for s in dict.fromkeys([best, "scratch", *behind]) if s in targets]
    if need:
        out.append(f"Labelled images per class needed to reach {label} {target:g}: " + "; ".join(need) + ".")
    at_n_pairs = [r for r in paired if r["n_per_class"] == n and math.isfinite(r["mean_diff"])]
    if at_n_pairs:
        how = ("paired cluster bootstrap over test groups × repeats" if at_n_pairs[0].get("method")
               else "paired bootstrap over repeats only (no per-image test results to resample)")
        parts = [f"{r['strategy']} {r['mean_diff']:+.3f} (95% CI {num(r['ci_low'])} to "
                 f"{num(r['ci_high'])}, p = {pvalue(r['p_value'])}, Holm-adjusted p = "
                 f"{pvalue(r.get('p_holm'))})" for r in at_n_pairs]
        survivors = [r["strategy"] for r in at_n_pairs if r.get("survives")]
        k = len(at_n_pairs)
        plural = "s" if k != 1 else ""
        if all(r.get("few_pairs") for r in at_n_pairs):
            few = min(r["n"] for r in at_n_pairs)
            needed = MIN_REPEATS_FOR_VERDICT if at_n_pairs[0].get("method") else MIN_PAIRS_FOR_WILCOXON
            verdict = (f"With {few} repeat{'s' if few != 1 else ''}, too few for a verdict (it takes "
                       f"{needed}): no strategy is shown to differ from {baseline} yet.")
        elif survivors:
            verdict = (f"Surviving the Holm correction for {k} comparison{plural} (at 0.05): "
                       + ", ".join(survivors) + ".")
        else:
            verdict = (f"None survives the Holm correction for {k} comparison{plural} (at 0.05): "
                       f"at this size no strategy is shown to differ from {baseline}.")
        out.append(f"Against {baseline} at {n} per class, difference of mean {label} ({how}): "
                   + "; ".join(parts) + ". " + verdict)
    if pretrain_note:
        out.append(pretrain_note)
    if n_test:
        out.append(f"All numbers are measured on one fixed test set of {n_test} images that no model "
                   "trained or was selected on.")
    if synthetic:
        out.append("The data are SYNTHETIC (generated by the demo): these numbers show that the software "
                   "runs, not how well it works on real cells.")
    return out


def build(data: ReportData) -> dict[str, Any]:
    # The brief answers which strategy, on the usual random draw; selection arms have their own section.
    stratified = {s: pts for s, pts in data.cmaps[data.metric].items() if arm_parts(s)[1] is None}
    return {"summary": _summary_sentences(
        stratified, data.targets, data.paired, data.metric, data.target, data.n_test,
        data.synthetic, _test_cis(data.rows, data.metric), baseline=data.baseline,
        pretrain_note=_pretrain_note(data.config, data.strategies))}


SECTION = Section(anchor="answer", title="The answer in brief", nav="Answer", build=build,
                  template=fragment(__file__))
