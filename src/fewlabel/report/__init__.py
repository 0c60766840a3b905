"""The HTML report of a learning-curve run: one self-contained file.

    from fewlabel.report import build_report
    build_report("runs/pbc")          # -> runs/pbc/report.html
"""

from fewlabel.report.html import build_report, render, report_context

__all__ = ["build_report", "render", "report_context"]
