"""The sections of the report page, in page order.

A new section is one module here (``SECTION = Section(anchor, title, build, template, nav)``, its
``build(data: ReportData)`` giving the values its jinja fragment next to it renders) + one entry in
``SECTIONS``. ``report.html.report_context`` builds them in this order; the page template loops over
them (heading, contents link, fragment).
"""

from fewlabel.report.sections import (
    answer,
    calibration,
    confusion,
    dataset,
    explanations,
    labels_needed,
    learning_curves,
    patients,
    per_size,
    reproduce,
    selection,
    unfinished,
    versus_baseline,
)
from fewlabel.report.sections.section import Section

SECTIONS: tuple[Section, ...] = (
    answer.SECTION,
    dataset.SECTION,
    learning_curves.SECTION,
    labels_needed.SECTION,
    selection.SECTION,
    per_size.SECTION,
    patients.SECTION,
    versus_baseline.SECTION,
    calibration.SECTION,
    confusion.SECTION,
    explanations.SECTION,
    unfinished.SECTION,
    reproduce.SECTION,
)

__all__ = ["SECTIONS", "Section"]
