"""CLI: ``fewlabel report`` (the HTML report of a run) and ``fewlabel explain`` (attribution maps of
one model on image files). Thin shells over ``fewlabel.report`` and ``fewlabel.explain``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("explain")(explain)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def report(
    run_dir: Path = typer.Argument(..., help="Run folder written by `fewlabel curve`."),
    out: Path = typer.Option(None, "--out", help="HTML file to write (default RUN_DIR/report.html)."),
    metric: str = typer.Option("roc_auc", help="Headline metric: roc_auc, accuracy, balanced_accuracy, "
                               "macro_f1."),
    target: float = typer.Option(0.90, help="Value of the metric to reach: how many labels it takes."),
    baseline: str = typer.Option("scratch", help="Strategy every other one is compared with, paired."),
    explain: bool = typer.Option(True, "--explain/--no-explain", help="Compute the explanation figures."),
    examples: int = typer.Option(2, help="Test images per class in the explanation grids."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write one self-contained HTML report of a learning-curve run (figures inline)."""
    from fewlabel.report import build_report

    path = build_report(run_dir, out, metric=metric, target=target, baseline=baseline, explain=explain,
                        n_per_class=examples, log=None if quiet else _err)
    typer.echo(str(path))


def explain(
    model_dir: Path = typer.Argument(..., help="Model folder (`fewlabel train`, or a curve's cells/...)."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    method: str = typer.Option("saliency", help="saliency | lrp | lrp_gamma | gradcam"),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG overlays and .npy maps."),
    target: str = typer.Option(None, help="Class (name or index) to explain; default: the predicted one."),
) -> None:
    """Attribution maps of one model on image files: a PNG overlay and the raw map (.npy) per image."""
    from fewlabel.errors import FewlabelError
    from fewlabel.explain.attributions import ALL_METHODS
    from fewlabel.explain.run import explain_files

    if method not in ALL_METHODS:
        raise FewlabelError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    for rec in explain_files(model_dir, images, method=method, out=out, target=target):
        typer.echo(f"{rec['path']}\tpredicted {rec['predicted']} ({rec['probability']:.2f})\t"
                   f"explained {rec['explained']}\t{rec['png']}")
