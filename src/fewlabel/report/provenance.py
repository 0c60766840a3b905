"""Where a run's data came from, as far as the report must tell the reader: is it SYNTHETIC?

The demo's generator (``fewlabel.demo.synthetic``) leaves ``SYNTHETIC_DATA.json`` at the root of the
set it writes; any folder at or below such a root is synthetic. Kept here, not in the demo, because
the report (which the demo uses) must not depend on the demo.
"""

from __future__ import annotations

from pathlib import Path

SYNTHETIC_MARKER = "SYNTHETIC_DATA.json"


def is_synthetic(path: str | Path) -> bool:
    """True when ``path`` (a data folder or a file in it) lies in a set made by the demo generator."""
    p = Path(path).resolve()
    return any((d / SYNTHETIC_MARKER).is_file() for d in (p, *p.parents))
