"""How a number, a p-value and a figure look on the report page (the sections share these)."""

from __future__ import annotations

import base64
import math
from typing import Any


def num(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; a dash for a missing or non-finite number."""
    if value is None:
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def pvalue(p: Any) -> str:
    """A p-value to three decimals, "< 0.001" below that, a dash when there is none."""
    if p is None or not math.isfinite(float(p)):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def b64(data: bytes) -> str:
    """PNG bytes as the base64 text of a ``data:`` URI (the page loads nothing from outside)."""
    return base64.b64encode(data).decode("ascii")
