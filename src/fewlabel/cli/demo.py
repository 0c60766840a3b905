"""CLI: ``fewlabel demo`` — the main job on an embedded SYNTHETIC data set (a thin shell over
``fewlabel.demo.run_demo``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("fewlabel-demo"), "--out",
                             help="Folder for the synthetic data, the run and the report."),
    seed: int = typer.Option(0, help="Seed of the data and of the curve."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate SYNTHETIC quantitative-phase cells (healthy vs cancer, plus an unlabelled pool of
    another cell type), run a small learning curve (scratch, gan, ssl) and write the HTML report
    (about 5 minutes on 2 CPU cores)."""
    from fewlabel.demo import run_demo

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say("fewlabel demo: all data here are SYNTHETIC (generated now; no real cell was imaged).")
    command = shlex.join(["fewlabel", "demo", "--out", str(out), "--seed", str(seed)])
    result = run_demo(out, seed=seed, command=command, log=None if quiet else say)
    say(f"done in {result.seconds['total']:.0f} s; SYNTHETIC data in {result.dataset.root}")
    say(f"open the report: {result.report}")
    typer.echo(str(result.report))
