"""``build_report(run_dir)``: one self-contained HTML file from a run's store, run.json and figures.

Everything the page shows comes from ``RUN_DIR`` (rows of the results store, run.json, the
explanations index); figures are inline base64 PNGs and the page carries a Content-Security-Policy
that forbids any external load, so the file can be mailed or archived as is. The template is
rendered by jinja2 with autoescaping on: class names, file names and error messages are escaped.

Longer than most modules on purpose: it is the one place where a run becomes the page's context, one
small function per section (``report_context`` calls them in page order); the statistics live in
``evaluate`` and ``report.label_need`` / ``report.paired``, the figures in ``report.curves``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import platform
import shlex
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from fewlabel.evaluate.metrics import HEADLINE_METRICS
from fewlabel.fileio import atomic_write_text
from fewlabel.report.curves import (
    METRIC_LABELS,
    CurvePoint,
    PowerLaw,
    curves,
    fit_power_law,
    plot_curves,
    size_to_target,
)
from fewlabel.report.label_need import BACKTEST, INTERVAL_LEVEL, MAX_EXTRAPOLATION, estimate_need
from fewlabel.report.paired import MIN_PAIRS_FOR_WILCOXON, cluster_paired_table, holm_by_size, paired_table
from fewlabel.report.run_data import RunBootstrap, run_bootstrap

REPORT_FILE = "report.html"
METRICS = HEADLINE_METRICS
PACKAGES = ("fewlabel", "torch", "numpy", "scipy", "scikit-learn", "captum", "monai", "matplotlib", "jinja2")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pvalue(p: Any) -> str:
    if p is None or not math.isfinite(float(p)):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def software_versions() -> dict[str, str]:
    """Versions of the packages that make the numbers, at report time."""
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _is_synthetic(run: Mapping[str, Any]) -> bool:
    from fewlabel.report.provenance import is_synthetic

    if run.get("synthetic"):
        return True
    root = (run.get("dataset") or {}).get("root") or (run.get("config") or {}).get("data") or ""
    return bool(root) and is_synthetic(root)


def _command(run: Mapping[str, Any]) -> str:
    cmd = run.get("command")
    if isinstance(cmd, (list, tuple)):
        return shlex.join(str(c) for c in cmd)
    return str(cmd) if cmd else "(not recorded)"


def _fit_text(fit: PowerLaw | None) -> str | None:
    if fit is None:
        return None
    if fit.shift == 0:
        return f"{fit.a:.3f} − {fit.b:.3f}·n^−{fit.c:.2f}"
    return f"{fit.a:.3f} − {fit.b:.3f}·((n+{fit.shift:g})/{1 + fit.shift:g})^−{fit.c:.2f}"


def _point(points: list[CurvePoint], n: int) -> CurvePoint | None:
    return next((p for p in points if p.n_per_class == n), None)


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
    at_n = {s: _point(pts, n) for s, pts in cmap.items() if _point(pts, n) is not None}
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
        parts = [f"{r['strategy']} {r['mean_diff']:+.3f} (95% CI {_num(r['ci_low'])} to "
                 f"{_num(r['ci_high'])}, p = {_pvalue(r['p_value'])}, Holm-adjusted p = "
                 f"{_pvalue(r.get('p_holm'))})" for r in at_n_pairs]
        survivors = [r["strategy"] for r in at_n_pairs if r.get("survives")]
        k = len(at_n_pairs)
        verdict = (f"Surviving the Holm correction for {k} comparison{'s' if k != 1 else ''} (at 0.05): "
                   + ", ".join(survivors) + "." if survivors else
                   f"None survives the Holm correction for {k} comparison{'s' if k != 1 else ''} (at 0.05): "
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


def _size_tables(rows: list[dict], cmaps: dict[str, dict[str, list[CurvePoint]]], strategies: list[str],
                 cell_cis: dict[tuple[str, int], str] | None = None) -> list[dict[str, Any]]:
    """One table per size: per strategy, median [IQR] of each metric, CI of the median, repeats."""
    sizes = sorted({int(r["n_per_class"]) for r in rows})
    tables = []
    for n in sizes:
        lines = []
        for s in strategies:
            cells = [r for r in rows if r["strategy"] == s and int(r["n_per_class"]) == n]
            status = [r.get("status") for r in cells]
            line: dict[str, Any] = {"strategy": s, "ok": status.count("ok"), "failed": status.count("failed"),
                                    "skipped": status.count("skipped"), "metrics": {}}
            for m in METRICS:
                p = _point(cmaps[m].get(s, []), n)
                line["metrics"][m] = (
                    {"median": _num(p.median), "iqr": f"{_num(p.q1)}–{_num(p.q3)}",
                     "ci": f"{_num(p.ci_low)}–{_num(p.ci_high)}"} if p else None)
            ok_cells = sorted((r for r in cells if r.get("status") == "ok"), key=lambda r: int(r["repeat"]))
            r0 = ok_cells[0] if ok_cells else None
            line["images"] = _train_val(ok_cells)
            line["test_ci"] = (cell_cis or {}).get((s, n)) or (
                f"{_num(r0.get('roc_auc_ci_low'))}–{_num(r0.get('roc_auc_ci_high'))}" if r0 else "—")
            lines.append(line)
        tables.append({"n_per_class": n, "lines": lines})
    return tables


def _train_val(cells: list[dict]) -> str:
    """How many images trained and validated (all classes), e.g. "16 + 4" — at small n the protocol
    changes (no validation below 5 labelled groups per class), so the table says what each cell used."""
    pairs = sorted({(r.get("n_train"), r.get("n_val")) for r in cells if r.get("n_train") is not None})
    if not pairs:
        return "—"
    text = [f"{t} + {v or 0}" for t, v in pairs]
    return text[0] if len(text) == 1 else f"{text[0]} … {text[-1]}"


def _chance(metric: str, n_classes: int) -> float:
    """The metric's value for guessing: the floor of a fitted learning curve."""
    if metric == "roc_auc":
        return 0.5
    return 0.0 if metric == "macro_f1" else 1.0 / max(2, n_classes)


def _fit_of(estimate: Any) -> PowerLaw | None:
    fit = getattr(estimate, "fit", None)
    return None if fit is None else PowerLaw(float(fit.a[0]), float(fit.b[0]), float(fit.c[0]),
                                             shift=float(fit.d[0]))


def _bootstrap_answers(rb: RunBootstrap, cmap: dict[str, list[CurvePoint]], strategies: list[str],
                       target: float, baseline: str, chance: float
                       ) -> tuple[dict[str, PowerLaw | None], dict[str, Any], list[dict[str, Any]]]:
    """Curve CIs (set on the points), labels-needed estimates and paired comparisons, all from the
    one bootstrap over test groups × repeats."""
    fits: dict[str, PowerLaw | None] = {}
    targets: dict[str, Any] = {}
    for s in strategies:
        curve = rb.curve(s)
        if curve is None:
            continue
        lo, hi = curve.ci(0.95)
        for i, n in enumerate(curve.sizes):
            p = _point(cmap.get(s, []), n)
            if p is not None:
                p.ci_low, p.ci_high, p.mean = float(lo[i]), float(hi[i]), float(curve.point[i])
        est = estimate_need(curve, target, chance=chance)
        targets[s] = est
        fits[s] = _fit_of(est) if est.how == "extrapolated" else None
    return fits, targets, cluster_paired_table(rb, baseline)


def _cell_cis(rb: RunBootstrap | None, metric: str, n_boot: int = 1000) -> dict[tuple[str, int], str]:
    """(strategy, size) → the lowest repeat's ROC-AUC test-set CI, class-stratified (over groups),
    with the number of resamples it used."""
    from fewlabel.evaluate.metrics import classification_metrics

    if rb is None:
        return {}
    out = {}
    for key, reps in rb.probas.items():
        r0 = min(reps)
        m = classification_metrics(rb.labels, reps[r0], n_boot=n_boot, groups=rb.groups)["roc_auc"]
        out[key] = f"{_num(m['ci_low'])}–{_num(m['ci_high'])} ({m.get('n_boot_used', 0)}/{n_boot})"
    return out


def _pretrain_note(config: Mapping[str, Any], strategies: list[str]) -> str | None:
    pretrained = [s for s in strategies if s in ("gan", "ssl", "segmentation")]
    if not pretrained or config.get("pretrain_per_repeat"):
        return None
    return (f"The {', '.join(pretrained)} rows rest on ONE pretraining run each: repeats vary the labelled "
            "images and the fine-tuning seed only, so their spread and intervals are conditional on that "
            "pretraining run (pretraining per repeat would include its variance).")


def _confusions(rows: list[dict], classes: list[str], strategies: list[str]) -> list[dict[str, Any]]:
    """Repeat 0 (or the lowest successful repeat) at the largest size each strategy finished."""
    out = []
    for s in strategies:
        ok = [r for r in rows if r["strategy"] == s and r.get("status") == "ok" and r.get("confusion_matrix")]
        if not ok:
            continue
        n = max(int(r["n_per_class"]) for r in ok)
        r = min((r for r in ok if int(r["n_per_class"]) == n), key=lambda r: int(r["repeat"]))
        matrix = [[int(v) for v in row] for row in r["confusion_matrix"]]
        names = classes if len(classes) == len(matrix) else [f"class {i}" for i in range(len(matrix))]
        cells = []
        for i, row in enumerate(matrix):
            total = sum(row) or 1
            cells.append([{"count": v, "frac": v / total, "diag": i == j,
                           "alpha": f"{0.08 + 0.72 * v / total:.2f}"} for j, v in enumerate(row)])
        out.append({"strategy": s, "n_per_class": n, "repeat": int(r["repeat"]), "classes": names,
                    "rows": cells})
    return out


def _explanations(run_dir: Path, index: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not index:
        return []
    out = []
    for cell in sorted(index.get("cells", []), key=lambda c: (c["strategy"], int(c["n_per_class"]))):
        entry = {"strategy": cell["strategy"], "n_per_class": cell["n_per_class"],
                 "repeat": cell.get("repeat", 0), "notes": cell.get("lrp_notes", []),
                 "checks": [{"method": m, "deletion": _num(c.get("deletion")),
                             "deletion_random": _num(c.get("deletion_random")),
                             "insertion": _num(c.get("insertion")),
                             "insertion_random": _num(c.get("insertion_random")),
                             "randomisation": _num(c.get("randomisation_similarity"), 2),
                             "mask": (f"{_num(c.get('mask_inside'), 2)} (area {_num(c.get('mask_area'), 2)})"
                                      if "mask_inside" in c else None),
                             "failures": list(c.get("failures") or [])}
                            for m, c in (cell.get("checks") or {}).items()]}
        for key in ("grid", "tsne"):
            path = run_dir / cell[key] if cell.get(key) else None
            entry[key] = _b64(path.read_bytes()) if path is not None and path.is_file() else None
        out.append(entry)
    return out


def _seeds(run: Mapping[str, Any], rows: list[dict]) -> dict[str, Any]:
    config = run.get("config") or {}
    per = sorted({(int(r["repeat"]), int(r["n_per_class"]), r.get("seed"), r.get("draw_seed")) for r in rows})
    return {"base": config.get("seed", run.get("seed")), "repeats": config.get("repeats"),
            "cells": [{"repeat": r, "n_per_class": n, "train_seed": s, "draw_seed": d} for r, n, s, d in per]}


def report_context(run_dir: str | Path, metric: str = "roc_auc", target: float = 0.90,
                   baseline: str = "scratch", n_boot: int = 2000, seed: int = 0,
                   explanations: Mapping[str, Any] | None = None,
                   explain_error: str | None = None) -> dict[str, Any]:
    """Every number and figure of the report, as plain values (what the template renders; tests read it)."""
    from fewlabel.experiments.store import load_run
    from fewlabel.explain.run import read_index

    run_dir = Path(run_dir)
    run, rows = load_run(run_dir)
    config = run.get("config") or {}
    dataset = run.get("dataset") or {}
    classes = [str(c) for c in dataset.get("classes") or config.get("class_names") or []]
    order = list(config.get("strategies") or [])
    strategies = order + sorted({str(r["strategy"]) for r in rows} - set(order))
    cmaps = {m: curves(rows, m, n_boot=n_boot, seed=seed) for m in METRICS}
    for cm in cmaps.values():  # a strategy with no successful cell still gets a (blank) line
        for s in strategies:
            cm.setdefault(s, [])
    cmaps = {m: {s: cm[s] for s in strategies} for m, cm in cmaps.items()}
    rb = run_bootstrap(run_dir, rows, metric, n_boot=n_boot, seed=seed) if rows else None
    if rb is not None:
        fits, targets, paired = _bootstrap_answers(rb, cmaps[metric], strategies, target, baseline,
                                                   _chance(metric, len(classes)))
    else:  # older runs without per-image test results: statistics over repeats only
        fits = {s: fit_power_law(pts) for s, pts in cmaps[metric].items()}
        targets = {s: size_to_target(pts, target, fits[s]) for s, pts in cmaps[metric].items() if pts}
        paired = holm_by_size(paired_table(rows, metric, baseline=baseline, n_boot=n_boot, seed=seed))
    extend = max([t.n for t in targets.values() if t.n and t.extrapolated] or [0.0])
    figures = []
    for m in (metric, "accuracy") if metric != "accuracy" else ("accuracy",):
        if any(cmaps[m].values()):
            figures.append({"metric": m, "label": METRIC_LABELS.get(m, m), "png": _b64(plot_curves(
                cmaps[m], m, target=target if m == metric else None, fits=fits if m == metric else None,
                extend_to=extend if m == metric else None))})
    index = explanations if explanations is not None else read_index(run_dir)
    synthetic = _is_synthetic(run)
    n_test = dataset.get("n_test") or next((r.get("n_test") for r in rows if r.get("n_test")), None)
    return {
        "title": "fewlabel report: how far do the labels go?",
        "run_dir": str(run_dir.resolve()),
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "synthetic": synthetic,
        "metric": metric, "metric_label": METRIC_LABELS.get(metric, metric), "target": target,
        "baseline": baseline,
        "summary": _summary_sentences(cmaps[metric], targets, paired, metric, target, n_test, synthetic,
                                      _test_cis(rows, metric), baseline=baseline,
                                      pretrain_note=_pretrain_note(config, strategies)),
        "bootstrap": None if rb is None else {"source": rb.source, "n_boot": rb.plan.n_boot,
                                              "n_groups": rb.plan.n_groups, "repeats": rb.slots},
        "interval_level": INTERVAL_LEVEL, "max_extrapolation": MAX_EXTRAPOLATION, "backtest": BACKTEST,
        "dataset": dataset, "classes": classes, "n_test": n_test,
        "strategies": strategies,
        "figures": figures,
        "size_tables": _size_tables(rows, cmaps, strategies, _cell_cis(rb, metric)),
        "metric_labels": METRIC_LABELS, "metrics": METRICS,
        "paired": [{**p, "mean_diff_s": f"{p['mean_diff']:+.3f}" if math.isfinite(p["mean_diff"]) else "—",
                    "ci_s": f"{_num(p['ci_low'])} to {_num(p['ci_high'])}", "p_s": _pvalue(p["p_value"]),
                    "p_holm_s": _pvalue(p.get("p_holm"))}
                   for p in paired],
        "min_pairs": MIN_PAIRS_FOR_WILCOXON,
        "targets": [{"strategy": s, "text": t.text, "how": t.how, "extrapolated": t.extrapolated,
                     "fit": _fit_text(fits.get(s)) or _fit_text(_fit_of(t))} for s, t in targets.items()],
        "confusions": _confusions(rows, classes, strategies),
        "explanations": _explanations(run_dir, index),
        "explain_methods": (index or {}).get("methods", []),
        "explain_examples": (index or {}).get("examples", []),
        "explain_errors": (index or {}).get("errors", []),
        "explain_error": explain_error,
        "failed": [{"strategy": r["strategy"], "n_per_class": r["n_per_class"], "repeat": r["repeat"],
                    "status": r.get("status"), "error": r.get("error") or ""}
                   for r in rows if r.get("status") != "ok"],
        "n_rows": len(rows), "n_ok": sum(r.get("status") == "ok" for r in rows),
        "expected_cells": (len(config.get("strategies") or []) * len(config.get("sizes") or [])
                           * int(config.get("repeats") or 0)) or None,
        "config": config,
        "versions_run": run.get("versions") or {},
        "versions_report": software_versions(),
        "seeds": _seeds(run, rows),
        "command": _command(run),
        "started": run.get("created"), "updated": run.get("updated"),
        "fmt": _num,
    }


def render(context: Mapping[str, Any]) -> str:
    """The HTML text of a report context (jinja2, autoescape on)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("fewlabel.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def build_report(run_dir: str | Path, out: str | Path | None = None, *, metric: str = "roc_auc",
                 target: float = 0.90, baseline: str = "scratch", explain: bool = True, n_per_class: int = 2,
                 n_boot: int = 2000, seed: int = 0, log: Callable[[str], None] | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) atomically and return its path.

    With ``explain`` the explanation figures are computed first (cells already explained are reused);
    if that fails the report is still written, with the reason in place of the figures.
    """
    from fewlabel.errors import FewlabelError

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise FewlabelError("no fewlabel run here (run.json is missing)", path=run_dir)
    if metric not in METRICS:
        raise FewlabelError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    from fewlabel.experiments.store import load_run

    load_run(run_dir)  # a corrupt run.json or store is one line here, before any explanation work
    index, error = None, None
    if explain:
        from fewlabel.explain.run import explain_run

        try:
            index = explain_run(run_dir, n_per_class=n_per_class, seed=seed, log=log)
        except Exception as exc:  # figures are optional; the numbers must still be reported
            error = " ".join(f"{type(exc).__name__}: {exc}".split())
            if log:
                log(f"explanations skipped: {error}")
    context = report_context(run_dir, metric=metric, target=target, baseline=baseline, n_boot=n_boot,
                             seed=seed, explanations=index, explain_error=error)
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render(context))
    return path
