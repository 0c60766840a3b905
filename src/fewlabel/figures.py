"""Matplotlib helpers every figure-making module shares (explanations, the report).

Matplotlib's object API only (``Figure``, no pyplot): no global state, no GUI backend, safe in worker
processes.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plain_text(s: object, limit: int | None = None) -> str:
    """A user string shown literally (``$`` would otherwise switch matplotlib to mathtext), cut to
    ``limit`` characters so a long class name cannot push a figure apart."""
    text = str(s)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()
