"""CLI: curve (placeholder until its issue's module lands)."""

import typer


def register(app: typer.Typer) -> None:
    del app
