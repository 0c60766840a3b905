"""CLI: ``fewlabel inspect DATA`` — prints ``fewlabel.data.inspect.inspect_data``'s report.

Exit codes: 0 no problems; 1 problems found (the report is still printed); 2 the input cannot be read
at all (``main`` turns the ``FewlabelError`` into one stderr line); 3 a bug in fewlabel (``main`` saves
the traceback to a log file), so a script can tell "your data has problems" from "fewlabel broke".

Why ``SystemExit(1)`` and not ``typer.Exit(1)``: ``fewlabel.cli.main`` runs the app with
``standalone_mode=False``, under which Typer 0.29 *returns* a ``typer.Exit`` code instead of raising
it, and ``main`` does not pass that return value on; ``SystemExit`` reaches the interpreter either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def inspect(
    data: Path = typer.Argument(..., help="Class folder, images/+masks/ folder, CSV manifest or .npz."),
    masks: Path = typer.Option(None, "--masks", help="Mask folder mirroring the image tree."),
    group_pattern: str = typer.Option(
        None, "--group-pattern", help="Regex searched in each relative path; its first group is the "
        "patient / source id, e.g. '(TCGA_[A-Z0-9]+_[A-Z0-9]+)'."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    pool: bool = typer.Option(False, "--pool", help="DATA is an unlabelled folder of images (recursive)."),
    min_per_class: int = typer.Option(3, "--min-per-class",
                                      help="Fewer groups than this in a class is reported as a problem."),
) -> None:
    """Classes, counts, groups, shapes, dtypes, value ranges, masks — and every problem found."""
    from fewlabel.data.inspect import inspect_data

    progress = _progress_callback() if not json_out else None
    try:
        report = inspect_data(data, masks=masks, group_pattern=group_pattern, pool=pool,
                              min_per_class=min_per_class, progress=progress)
    finally:
        if progress is not None:
            progress.close()  # type: ignore[attr-defined]
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        print_report(report)
    if report.problems:
        raise SystemExit(1)


class _Progress:
    """A transient progress bar on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self.progress = Progress(console=Console(stderr=True), transient=True)
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("reading files", total=total)
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _progress_callback() -> _Progress | None:
    return _Progress() if sys.stderr.isatty() else None


def _plain(value: Any) -> str:
    """A string from the data (class, file name, problem) shown as it is: no Rich markup is interpreted
    (a class named ``[/]`` is a name, not a tag) and control characters are shown escaped, so a file
    name cannot move the cursor or recolour the terminal."""
    from rich.markup import escape

    from fewlabel.cli import printable

    return escape(printable(str(value)))


def _top(counts: dict[str, int], n: int = 6) -> str:
    items = list(counts.items())
    text = ", ".join(f"{_plain(k)} ({v})" for k, v in items[:n])
    return text + (f", … {len(items) - n} more" if len(items) > n else "")


def _near_copies_line(nc: dict[str, Any]) -> str:
    """How many near-copy pairs ``inspect`` found, or why it did not look."""
    if nc["n_pairs"] is None:
        line = "not looked for (too many images; see the note)"
    elif not nc["n_compared"] and nc["n_not_compared"]:
        return "not looked for (3-D volumes are not compared)"
    else:
        line = f"{nc['n_pairs']} pair(s)" if nc["n_pairs"] else "none"
        if nc["n_straddling_split"]:
            line += f", {nc['n_straddling_split']} across the given test split"
        line += f" (perceptual hash within {nc['max_distance']} bits; warned about, not merged)"
    if nc["n_not_compared"]:
        line += f"; {nc['n_not_compared']} image(s) or volume(s) not compared"
    return line


def print_report(report: Any) -> None:
    """Rich tables: summary, classes, properties, then problems (or 'no problems found')."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    console.print(f"[bold]{_plain(report.root)}[/bold]  layout: {_plain(report.layout)}")
    console.print(f"{report.n_images} {report.sample_kind}, {len(report.classes)} classes, "
                  f"{report.n_groups} groups, {report.n_masks} masks")

    if report.classes:
        t = Table(title="classes")
        t.add_column("class")
        t.add_column("samples", justify="right")
        t.add_column("groups", justify="right")
        per_group = report.groups.get("per_class", {})
        for cls, n in report.classes.items():
            t.add_row(_plain(cls), str(n), str(per_group.get(cls, "")))
        t.add_row("[bold]total[/bold]", str(sum(report.classes.values())), str(report.n_groups))
        console.print(t)

    p = Table(title="properties", show_header=False)
    p.add_column("what")
    p.add_column("value", overflow="fold")
    p.add_row("shapes", _top(report.shapes))
    p.add_row("dtypes", _top(report.dtypes))
    p.add_row("channels", _top(report.channels))
    p.add_row("formats", _top(report.formats))
    if report.value_range is not None:
        vr = report.value_range
        by = "; ".join(f"{k}: {v[0]:g}..{v[1]:g}" for k, v in report.value_range_by_dtype.items())
        p.add_row("value range", f"{vr[0]:g} .. {vr[1]:g}  ({by})")
    p.add_row("spacing", _top(report.spacing, 4))
    g = report.groups
    ipg = g.get("images_per_group") or {}
    grp = f"{report.n_groups}"
    if g.get("pattern"):
        grp += f" from pattern {g['pattern']!r}"
    if ipg:
        grp += f"; samples per group {ipg['min']}..{ipg['max']} (mean {ipg['mean']:g})"
    p.add_row("groups", grp)
    nc = report.near_copies
    if nc:
        p.add_row("near-copies", _near_copies_line(nc))
    if report.n_masks or report.masks.get("missing"):
        m = report.masks
        p.add_row("masks", f"{m['n_masks']} found, {m['matched']} matched, {m['missing']} missing; "
                           f"values {_top(m['values'], 3)}")
    console.print(p)

    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {_plain(w)}")
    for note in report.notes:
        console.print(f"[dim]note: {_plain(note)}[/dim]")
    if report.problems:
        t = Table(title=f"[red]{len(report.problems)} problem(s)[/red]")
        t.add_column("path", overflow="fold")
        t.add_column("problem", overflow="fold")
        for prob in report.problems:
            t.add_row(_plain(prob.path), _plain(prob.problem))
        console.print(t)
    else:
        console.print("[green]no problems found[/green]")
