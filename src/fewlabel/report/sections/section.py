"""``Section``: one part of the report page, from its values to its HTML, in one module.

A section module defines ``SECTION = Section(...)`` and has its jinja fragment next to it (the HTML
under the heading); ``report.sections.SECTIONS`` lists the sections in page order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewlabel.report.analysis import ReportData


@dataclass(frozen=True)
class Section:
    """``build(data)`` gives the section's values, or None to leave it off the page. ``title`` and
    ``nav`` may hold ``{name}`` fields, filled from the page values and the section's own."""

    anchor: str  # the heading's id, and the section's key in the report context
    title: str  # the heading
    build: Callable[[ReportData], dict[str, Any] | None]
    template: Path  # the fragment, rendered with the page values and the section's own (autoescaped)
    nav: str | None = None  # the link text in the page's contents; None: not listed there


def fragment(module_file: str) -> Path:
    """The fragment next to a section module: ``answer.py`` → ``answer.html.j2``."""
    path = Path(module_file)
    return path.with_name(f"{path.stem}.html.j2")
