"""CLI: ``fewlabel report`` (the HTML report of a run) and ``fewlabel explain`` (attribution maps of
one model on image files). Thin shells over ``fewlabel.report`` and ``fewlabel.explain``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from fewlabel.cli.common import allow_mismatch_option


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
    check_images: int = typer.Option(8, help="Test images per class the explanation checks run on (their "
                                     "intervals are over these images; 0 = no checks, the grids only: "
                                     "the checks cost several times the grids)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file (the "
                                   "default RUN_DIR/report.html is the report's own and always replaced)."),
) -> None:
    """Write one self-contained HTML report of a learning-curve run (figures inline)."""
    from fewlabel.report import build_report
    from fewlabel.settings import check_options

    check_options({"--target": target, "--examples": examples, "--check-images": check_images})

    # build_report checks the output (report.html of the run, or outside the run folder) before any work
    path = build_report(run_dir, out, metric=metric, target=target, baseline=baseline, explain=explain,
                        n_per_class=examples, check_per_class=check_images, log=None if quiet else _err,
                        overwrite=overwrite)
    typer.echo(str(path))


def explain(
    model_dir: Path = typer.Argument(..., help="Model folder (`fewlabel train`, or a curve's cells/...)."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    method: str = typer.Option("saliency", help="saliency | lrp | lrp_gamma | gradcam"),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG overlays and .npy maps."),
    target: str = typer.Option(None, help="Class (name or index) to explain; default: the predicted one."),
    allow_mismatch: bool = allow_mismatch_option("Explain"),
) -> None:
    """Attribution maps of one model on image files: a PNG overlay and the raw map (.npy) per image.
    An image unlike the training images is refused as `predict` refuses it, before anything is written."""
    from fewlabel.cli import printable
    from fewlabel.errors import FewlabelError, NoImagesError
    from fewlabel.explain.attributions import ALL_METHODS
    from fewlabel.explain.run import explain_files

    if method not in ALL_METHODS:
        raise FewlabelError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    # explain_files checks --out (never inside the model folder or the images) before any work
    try:
        records = explain_files(model_dir, images, method=method, out=out, target=target,
                                allow_mismatch=allow_mismatch)
    except NoImagesError as exc:  # as `predict`: nothing found to work on is exit 1, not a usage error
        typer.echo(f"error: {printable(str(exc))}", err=True)
        raise typer.Exit(1) from None
    for rec in records:
        if rec.get("warning"):
            typer.echo(f"warning: {rec['path']}: {rec['warning']}", err=True)
        typer.echo(f"{rec['path']}\tpredicted {rec['predicted']} ({rec['probability']:.2f})\t"
                   f"explained {rec['explained']}\t{rec['png']}")
