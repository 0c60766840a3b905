"""Reproduce: the exact command, every seed, the software versions (then and now), the configuration."""

from __future__ import annotations

import platform
import shlex
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from fewlabel.experiments.arms import arm_parts
from fewlabel.report.analysis import ReportData
from fewlabel.report.sections.section import Section, fragment

PACKAGES = ("fewlabel", "torch", "numpy", "scipy", "scikit-learn", "captum", "monai", "matplotlib", "jinja2")


def software_versions() -> dict[str, str]:
    """Versions of the packages that make the numbers, at report time."""
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _command(run: Mapping[str, Any]) -> str:
    cmd = run.get("command")
    if isinstance(cmd, (list, tuple)):
        return shlex.join(str(c) for c in cmd)
    return str(cmd) if cmd else "(not recorded)"


def _seeds(run: Mapping[str, Any], rows: list[dict]) -> dict[str, Any]:
    config = run.get("config") or {}
    # one line per draw: a selection arm's picks have their own seed (the rule's), said by its name
    per = sorted({(int(r["repeat"]), int(r["n_per_class"]), r.get("seed"), r.get("draw_seed"),
                   arm_parts(str(r["strategy"]))[1] or "") for r in rows})
    return {"base": config.get("seed", run.get("seed")), "repeats": config.get("repeats"),
            "cells": [{"repeat": r, "n_per_class": n, "train_seed": s, "draw_seed": d, "drawn_by": by}
                      for r, n, s, d, by in per]}


def build(data: ReportData) -> dict[str, Any]:
    return {"command": _command(data.info), "seeds": _seeds(data.info, data.rows), "config": data.config,
            "versions_run": data.info.get("versions") or {}, "versions_report": software_versions()}


SECTION = Section(anchor="repro", title="Reproduce", nav="Reproduce", build=build,
                  template=fragment(__file__))
