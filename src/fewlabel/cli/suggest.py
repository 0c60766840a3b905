"""CLI: ``fewlabel suggest POOL --budget K --out DIR`` — a thin shell over ``pipeline.suggest.suggest``.

Exit codes as ``predict``'s: 0 done; 1 done, but some files could not be read (listed on stderr and in
``selection.json``); 2 a refused request or input (one line).
"""

from __future__ import annotations

from pathlib import Path

import typer

SHOWN_SKIPPED = 20  # unreadable files named on stderr; selection.json holds every one


def register(app: typer.Typer) -> None:
    app.command("suggest")(suggest)


def suggest(
    pool: Path = typer.Argument(..., help="Unlabelled images: a folder (recursive; class folders' names "
                                "are ignored) or a CSV with a 'path' column."),
    budget: int = typer.Option(..., "--budget", help="How many images to propose."),
    out: Path = typer.Option(..., "--out", help="Folder to write the suggestions to."),
    labelled: Path = typer.Option(None, "--labelled", help="Images already labelled (class folder or CSV "
                                  "manifest): never proposed again, nor their copies; they count as chosen."),
    # the rules of pipeline.selection.RULES, named here so that `fewlabel --help` does not load torch
    rule: str = typer.Option("typiclust", "--rule", help="typiclust | probcover | random. Which is better "
                             "is for a benchmark to say."),
    test_size: int = typer.Option(None, "--test-size", help="Images in the random test sample (default: "
                                  "max(20, 10% of the pool), capped by what the budget leaves; 0: none)."),
    seed: int = typer.Option(0, "--seed"),
    encoder: str = typer.Option(None, "--encoder", help="Embedding encoder (default: the ImageNet "
                                "MobileNetV2 of the probe; vit with --encoder-weights)."),
    encoder_weights: Path = typer.Option(None, "--encoder-weights", help="Checkpoint for --encoder."),
    image_size: str = typer.Option(None, "--image-size", help="Resize: one side (64) or one per axis; "
                                   "default: the pool's most common size."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace suggestions already in --out."),
) -> None:
    """Propose the images of an unlabelled pool to label next, and a random test sample to label once."""
    from fewlabel.cli import printable
    from fewlabel.cli.common import image_size_value
    from fewlabel.pipeline.suggest import suggest as run_suggest

    def say(line: str) -> None:
        typer.echo(printable(line), err=True)

    result = run_suggest(pool, budget, labelled=labelled, out=out, rule=rule, seed=seed, test_size=test_size,
                         encoder=encoder, encoder_weights=encoder_weights,
                         image_size=image_size_value(image_size), device=device, overwrite=overwrite,
                         progress=say)
    for note in result.notes:
        say(f"note: {note}")
    if labelled is not None:
        c = result.counts
        typer.echo(printable(
            f"labelled: {c['covering']} image(s) of {labelled} count as chosen ({c['labelled_in_pool']} of "
            f"them in the pool, never proposed, copies included); {c['labelled_test_in_pool']} labelled "
            "test image(s) in the pool are never proposed either"))
    typer.echo(printable(result.chosen_line()))
    typer.echo(printable(result.test_line()))
    if result.skipped:
        say(f"{len(result.skipped)} file(s) could not be read and were skipped:")
        for path, problem in result.skipped[:SHOWN_SKIPPED]:
            say(f"  {path}: {problem}")
        if len(result.skipped) > SHOWN_SKIPPED:
            say(f"  … and {len(result.skipped) - SHOWN_SKIPPED} more (all in selection.json)")
    names = ", ".join(p.name for p in result.files.values())
    typer.echo(printable(f"wrote {out}/: {names} (paths in the CSVs relative to {out}/; open "
                         "contact_sheet.html to see the images in the order to label them)"))
    if result.skipped:
        raise SystemExit(1)
