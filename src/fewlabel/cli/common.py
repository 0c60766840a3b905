"""Small printing helpers shared by commands."""

from __future__ import annotations

import json
import re
from typing import Any

import typer


def allow_mismatch_option(verb: str) -> Any:
    """``--allow-mismatch`` of ``predict`` and ``explain``, which refuse the same images
    (``data.mismatch.screen_image``)."""
    return typer.Option(False, "--allow-mismatch", help=f"{verb} images whose channels, value type or "
                        "size differ from the training images (warns).")


def test_size_value(value: float) -> float | int:
    """``--test-size``: a fraction below 1, or a whole count per class (``5`` or ``5.0``) from 1 up.
    ``1.5`` stays a float, so the split refuses it instead of silently holding out 1 per class."""
    return int(value) if value >= 1 and float(value).is_integer() else value


def image_size_value(text: str | None) -> int | tuple[int, ...] | None:
    """``--image-size``: ``64`` (every side; a cube for volumes) or one size per axis, ``36,64,64``
    (depth, height, width) or ``64x96``, so a volume can keep its few slices while shrinking in-plane."""
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in re.split(r"[,x×]", str(text).strip().lower())]
    try:
        sides = tuple(int(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"expected a whole number or one per axis such as 36,64,64; got {text!r}",
                                 param_hint="--image-size") from None
    if len(sides) not in (1, 2, 3) or min(sides) < 1:
        raise typer.BadParameter(f"expected 1, 2 or 3 positive sides; got {text!r}",
                                 param_hint="--image-size")
    return sides[0] if len(sides) == 1 else sides


def print_metrics_table(metrics: dict[str, Any], title: str = "metrics") -> None:
    from rich.console import Console
    from rich.table import Table

    from fewlabel.evaluate.metrics import METRICS, PATIENT_METRICS

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for name in METRICS:
        m = metrics.get(name)
        if not isinstance(m, dict):
            continue
        table.add_row(name, f"{m['value']:.3f}", f"{m['ci_low']:.3f} – {m['ci_high']:.3f}")
    patient = metrics.get("patient")
    if isinstance(patient, dict):  # test patients with several images: pooled per patient too
        for name in PATIENT_METRICS:
            m = patient[name]
            table.add_row(f"{name}, per patient ({patient['n_groups']}, {patient['rule']})",
                          f"{m['value']:.3f}", f"{m['ci_low']:.3f} – {m['ci_high']:.3f}")
    Console().print(table)


def parse_settings(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["max_epochs=30", "augment=strong"]`` → {"max_epochs": 30, "augment": "strong"} (JSON values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value  # a bare word: a string
    return out
