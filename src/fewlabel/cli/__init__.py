"""The command line: a thin shell over the API. Each command group lives in its own module."""

from __future__ import annotations

import importlib
import sys

import typer

from fewlabel.errors import FewlabelError

app = typer.Typer(
    name="fewlabel",
    help="Medical image classifiers from tens of labels, and how far those labels go.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Order = order in --help.
_COMMAND_MODULES = ("demo", "inspect", "train", "pretrain", "curve", "report")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"fewlabel.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: a ``FewlabelError`` becomes one line on stderr and exit code 2, never a traceback."""
    try:
        # With standalone_mode=False, typer returns a raised Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except FewlabelError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors (unknown option, missing argument) carry their own message and exit code.
        # typer >= 0.29 vendors click as typer._click; older versions use click itself.
        if _is_click_exception(exc):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _is_click_exception(exc: Exception) -> bool:
    bases = []
    try:
        from typer._click import ClickException as Vendored

        bases.append(Vendored)
    except ImportError:
        pass
    try:
        from click import ClickException

        bases.append(ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(bases)) if bases else False
