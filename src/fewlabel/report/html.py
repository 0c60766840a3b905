"""``build_report(run_dir)``: one self-contained HTML file from a run's store, run.json and figures.

Everything the page shows comes from ``RUN_DIR``, read through ``experiments.run_view.RunView`` and
analysed once (``report.analysis``); each section of the page is one module of ``report.sections``
(its values and its template fragment), listed in page order in ``sections.SECTIONS``. Figures are
inline base64 PNGs and the page carries a Content-Security-Policy that forbids any external load, so
the file can be mailed or archived as is. Templates are rendered by jinja2 with autoescaping on:
class names, file names and error messages are escaped.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewlabel.errors import FewlabelError, one_line
from fewlabel.experiments.run_view import RunView
from fewlabel.fileio import atomic_write_text, check_output_file
from fewlabel.report.analysis import METRICS, ReportData, analyse, configured_arms
from fewlabel.report.curves import METRIC_LABELS
from fewlabel.report.sections import SECTIONS, Section

if TYPE_CHECKING:
    from jinja2 import Environment

REPORT_FILE = "report.html"
PAGE_TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"


def _page(data: ReportData) -> dict[str, Any]:
    """What the page around the sections shows (and every section's fragment and title may use)."""
    rb, run, rows, config = data.bootstrap, data.info, data.rows, data.config
    return {
        "title": "fewlabel report: how far do the labels go?",
        "run_dir": str(data.view.root.resolve()),
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "synthetic": data.synthetic,
        "metric": data.metric, "metric_label": METRIC_LABELS.get(data.metric, data.metric),
        "target": data.target, "baseline": data.baseline,
        "bootstrap": None if rb is None else {"source": rb.source, "n_boot": rb.plan.n_boot,
                                              "n_groups": rb.plan.n_groups, "repeats": rb.slots},
        "n_rows": len(rows), "n_ok": sum(r.get("status") == "ok" for r in rows),
        "expected_cells": (len(configured_arms(config)) * len(config.get("sizes") or [])
                           * int(config.get("repeats") or 0)) or None,
        "started": run.get("created"), "updated": run.get("updated"),
    }


def report_context(run_dir: str | Path, metric: str = "roc_auc", target: float = 0.90,
                   baseline: str = "scratch", n_boot: int = 2000, seed: int = 0,
                   explanations: Mapping[str, Any] | None = None, explain_error: str | None = None,
                   sections: Sequence[Section] = SECTIONS) -> dict[str, Any]:
    """Every number and figure of the report, as plain values (what the templates render; tests read
    it): the page's values, and under ``"sections"`` each section that is on the page, by anchor, in
    page order, as ``{"title", "nav", "template", "values"}``."""
    data = analyse(RunView(run_dir), metric=metric, target=target, baseline=baseline, n_boot=n_boot,
                   seed=seed, explanations=explanations, explain_error=explain_error)
    page = _page(data)
    built: dict[str, dict[str, Any]] = {}
    for section in sections:
        values = section.build(data)
        if values is None:
            continue
        # a fragment sees the page values and its own: one name, one meaning
        if clash := sorted(values.keys() & page.keys()):
            raise ValueError(f"report section {section.anchor!r} redefines page values {clash}")
        names = {**page, **values}
        built[section.anchor] = {"title": section.title.format(**names),
                                 "nav": section.nav.format(**names) if section.nav else None,
                                 "template": str(section.template), "values": values}
    return {**page, "sections": built}


def _environment() -> Environment:
    from jinja2 import Environment, FunctionLoader, StrictUndefined

    def load(name: str) -> tuple[str, str, None]:  # templates are named by their file's path
        return Path(name).read_text(encoding="utf-8"), name, None

    return Environment(loader=FunctionLoader(load), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def render(context: Mapping[str, Any]) -> str:
    """The HTML text of a report context (jinja2, autoescape on)."""
    from markupsafe import Markup

    env = _environment()
    page = {k: v for k, v in context.items() if k != "sections"}
    # each fragment is rendered with autoescape on, so its output is safe HTML for the page
    sections = [{"anchor": anchor, "title": s["title"], "nav": s["nav"],
                 "html": Markup(env.get_template(s["template"]).render(**page, **s["values"]).strip("\n"))}
                for anchor, s in context["sections"].items()]
    return env.get_template(str(PAGE_TEMPLATE)).render(**page, sections=sections)


def build_report(run_dir: str | Path, out: str | Path | None = None, *, metric: str = "roc_auc",
                 target: float = 0.90, baseline: str = "scratch", explain: bool = True, n_per_class: int = 2,
                 n_boot: int = 2000, seed: int = 0, log: Callable[[str], None] | None = None,
                 overwrite: bool = True, check_per_class: int | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) atomically and return its path.

    With ``explain`` the explanation figures are computed first (cells already explained are reused);
    if that fails the report is still written, with the reason in place of the figures.
    ``check_per_class``: test images per class of the explanation checks (None: the default; 0: none).
    ``RUN_DIR/report.html`` is the report's own file and is replaced on every call; any other ``out``
    must lie outside the run folder, and an existing one is replaced only with ``overwrite``.
    """
    view = RunView(run_dir)
    if metric not in METRICS:
        raise FewlabelError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    default = view.root / REPORT_FILE
    path = Path(out) if out is not None else default
    own = out is None or os.path.realpath(path) == os.path.realpath(default)
    # the output first: a refused one leaves the run as it was (the store is not even opened)
    check_output_file(path, "report file (--out)", overwrite=overwrite or own,
                      inputs=() if own else (view.root,))
    view.check()  # a corrupt run.json or store is one line here, before any explanation work
    index, error = None, None
    if explain:
        from fewlabel.explain.run import explain_run

        try:
            checks = {} if check_per_class is None else {"checks": check_per_class > 0,
                                                         "check_per_class": max(check_per_class, 0)}
            index = explain_run(run_dir, n_per_class=n_per_class, seed=seed, log=log, **checks)
        except Exception as exc:  # figures are optional; the numbers must still be reported
            error = one_line(exc)
            if log:
                log(f"explanations skipped: {error}")
    context = report_context(run_dir, metric=metric, target=target, baseline=baseline, n_boot=n_boot,
                             seed=seed, explanations=index, explain_error=error)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render(context))
    return path
